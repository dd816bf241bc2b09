# shellcheck shell=bash
# Shared body of the launchers in examples/ (sourced, never run). Each launcher sets DATASET and
# its defaults, then calls `alpnet_main train|test "$@"`. Every setting below can be overridden
# from the environment; extra `key=value` Sacred arguments go after the launcher's name.
#
#   FOLDS="0 1 2 3 4"    validation folds to run (eval_fold)
#   LABEL_GROUPS="0 1"   label groups (label_sets); SETTING=2 excludes each group's test organs
#                        from training, SETTING=1 excludes nothing; EXCLU='[...]' forces one list
#   SCALES="MIDDLE"      superpixel scales (superpix_scale)
#   SUPP_ID              support_idx (the launcher's: [4] MRI, [6] CT)   LOGDIR=./runs  path.log_dir
#   NSTEP=100100  SNAPSHOT_INTERVAL=25000  MAX_ITER=1000  DECAY=0.95  SEED=1234  NWORKER=4
#   MODEL=dlfcn_res101  PROTO_GRID=8  MIN_FG=1
#   DATA_DIR=...         the dataset folder (path.<DATASET>.data_dir and path.<base>.data_dir)
#   EXTRA_ARGS="..."     more Sacred arguments (word-split), after those of the command line
#   PYTHON=python3       what runs the entry point: "torchrun --standalone --nproc_per_node=4",
#                        "srun ... python3" (examples/frontier/train.sbatch)
#   RELOAD_PATH=...      (test) the snapshot to evaluate; default: the training experiment's
#                        snapshot with the highest step under LOGDIR (as resume=True picks it)
#   RESUME=1             (train) continue each run from its highest-step snapshot (resume=True)
#                        and skip runs whose final snapshot (<NSTEP>.pth) exists
#   PARALLEL=1           runs at a time (in the background when > 1; e.g. one per GPU, with a
#                        PYTHON that binds one GPU to each: examples/frontier/train.sbatch MODE=farm)
#   STOP_FILE=...        start no further run once this file exists (set by the sbatch scripts)
#                        or once a run exited 3 (stopped by a signal after saving its snapshot)
#   DRY_RUN=1            print the commands, run nothing
#
# Runs from any directory: it changes to the repository root; relative LOGDIR, DATA_DIR,
# RELOAD_PATH and STOP_FILE are taken relative to the directory it was started from.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "examples/launch_lib.sh is sourced by the launchers; run e.g. examples/train_ssl_abdominal_mri.sh" >&2
    exit 2
fi

ALPNET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALPNET_EXIT_INTERRUPTED=3    # a run stopped by a signal, its snapshot saved (util/signals.py)

_alpnet_abs() {  # absolute path of $1 relative to the starting directory (empty stays empty)
    if [[ -z "$1" || "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "${1#./}"; fi
}

_alpnet_quote() {  # one argument as the shell needs it: bare when safe, else in single quotes
    if [[ "$1" =~ ^[A-Za-z0-9_=./:,+@%-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

_alpnet_show() {  # print a command line, quoted so that it can be pasted into a shell
    local out="" a
    for a in "$@"; do out+="$(_alpnet_quote "$a") "; done
    printf '%s\n' "${out% }"
}

_alpnet_card_exclusions() {  # "<group> <test labels as [a,b]>" per label group of the card, from Python
    (cd "$ALPNET_ROOT" && python3 - "$1") <<'PY'
import sys
from data.cards import load_card, base_name
try:
    card = load_card(base_name(sys.argv[1]))
except ValueError as err:
    sys.exit(f"error: {err}")
for g, group in enumerate(card.groups):
    test = sorted(set(card.pa_all) - set(group))
    print(g, "[" + ",".join(str(x) for x in test) + "]")
PY
}

alpnet_card_groups() {  # the label group numbers of the card of $1, e.g. "0 1"
    local lines
    lines="$(_alpnet_card_exclusions "$1")" || return 2
    printf '%s\n' "$lines" | awk '{printf "%s%s", (NR > 1 ? " " : ""), $1}'
}

alpnet_card_support() {  # support_idx of the card of $1 (its `support_idx`, else [-1])
    (cd "$ALPNET_ROOT" && python3 - "$1") <<'PY'
import sys
from data.cards import load_card, base_name
try:
    support = load_card(base_name(sys.argv[1])).extra.get("support_idx", [-1])
except ValueError as err:
    sys.exit(f"error: {err}")
print("[" + ",".join(str(int(i)) for i in support) + "]")
PY
}

_alpnet_exclusion() {  # exclude_cls_list for label group $1
    local group="$1"
    if [[ -n "${EXCLU:-}" ]]; then printf '%s' "$EXCLU"; return; fi
    if [[ "${SETTING:-2}" == 1 ]]; then printf '[]'; return; fi
    if [[ "${SETTING:-2}" != 2 ]]; then
        echo "SETTING must be 1 (nothing excluded) or 2 (test organs excluded), got '$SETTING'" >&2
        return 2
    fi
    if [[ -n "${EXCLU_BY_GROUP[$group]:-}" ]]; then printf '%s' "${EXCLU_BY_GROUP[$group]}"; return; fi
    if [[ -z "${_ALPNET_CARD_EXCL:-}" ]]; then
        _ALPNET_CARD_EXCL="$(_alpnet_card_exclusions "$DATASET")" || return 2
    fi
    local line
    line="$(printf '%s\n' "$_ALPNET_CARD_EXCL" | awk -v g="$group" '$1 == g {print $2}')"
    if [[ -z "$line" ]]; then
        echo "label group $group does not exist for $DATASET (card groups: $(printf '%s\n' "$_ALPNET_CARD_EXCL" | awk '{printf "%s ", $1}'))" >&2
        return 2
    fi
    printf '%s' "$line"
}

_alpnet_train_prefix() {  # exp_prefix of the training run for fold $1, group $2, scale $3
    printf 'train_%s_lbgroup%s_scale_%s_vfold%s' "$DATASET" "$2" "$3" "$1"
}

_alpnet_exp_dir() {  # the Sacred experiment folder of a training run (config_ssl_upload.exp_str)
    printf '%s/mySSL_%s_%s_sets_%s_1shot' "$LOGDIR" "$(_alpnet_train_prefix "$1" "$2" "$3")" "$DATASET" "$2"
}

_alpnet_best_snapshot() {  # the highest <step>.pth over the experiment's runs (the rule of resume=True)
    local exp="$1" run snap best="" best_step=-1 best_run=-1 step
    [[ -d "$exp" ]] || return 1
    for run in $(ls -1 "$exp" 2>/dev/null | grep -E '^[0-9]+$'); do
        for snap in $(ls -1 "$exp/$run/snapshots" 2>/dev/null | grep -E '^[0-9]+\.pth$'); do
            step=$((10#${snap%.pth}))
            if (( step > best_step || (step == best_step && run > best_run) )); then
                best="$exp/$run/snapshots/$snap"; best_step="$step"; best_run="$run"
            fi
        done
    done
    [[ -n "$best" ]] || return 1
    printf '%s' "$best"
}

# The original launch line's arguments (docs/method.md, 'Experiment interface').
_alpnet_args() {  # fill ALPNET_ARGS with them for fold $1, group $2, scale $3
    local fold="$1" group="$2" scale="$3" exclu
    exclu="$(_alpnet_exclusion "$group")" || return 2
    ALPNET_ARGS=(
        "modelname=${MODEL}" 'usealign=True' 'optim_type=sgd' "num_workers=${NWORKER}"
        'scan_per_load=-1' "label_sets=${group}" 'use_wce=True'
        "exp_prefix=$(_alpnet_train_prefix "$fold" "$group" "$scale")"
        'clsname=grid_proto' "n_steps=${NSTEP}" "exclude_cls_list=${exclu}" "eval_fold=${fold}"
        "dataset=${DATASET}" "proto_grid_size=${PROTO_GRID}" "max_iters_per_load=${MAX_ITER}"
        "min_fg_data=${MIN_FG}" "seed=${SEED}" "save_snapshot_every=${SNAPSHOT_INTERVAL}"
        "superpix_scale=${scale}" "lr_step_gamma=${DECAY}" "path.log_dir=${LOGDIR}"
        "support_idx=${SUPP_ID}"
    )
    if [[ -n "${DATA_DIR:-}" ]]; then
        ALPNET_ARGS+=("path.${DATASET}.data_dir=${DATA_DIR}")
        [[ "$DATASET" != "${DATASET%_Superpix}" ]] && ALPNET_ARGS+=("path.${DATASET%_Superpix}.data_dir=${DATA_DIR}")
    fi
    return 0
}

_alpnet_run() {  # print (DRY_RUN=1) or run one command; in the background when PARALLEL > 1
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        _alpnet_show "$@"
        return 0
    fi
    echo "===================================" >&2
    _alpnet_show "$@" >&2
    if [[ -z "${_ALPNET_STATUS_DIR:-}" ]]; then
        "$@"
        return
    fi
    while (( $(jobs -rp | wc -l) >= PARALLEL )); do wait -n || true; done
    if _alpnet_any_interrupted; then return "$ALPNET_EXIT_INTERRUPTED"; fi   # a stop: start no more
    local tag="$((++_ALPNET_N_STARTED))"
    ( status=0; "$@" || status=$?; echo "$status $*" > "$_ALPNET_STATUS_DIR/$tag" ) &
}

_alpnet_any_interrupted() {  # a background run exited 3 (stopped by a signal)?
    local f status cmd
    for f in "$_ALPNET_STATUS_DIR"/*; do
        [[ -e "$f" ]] || continue
        read -r status cmd < "$f"
        [[ "$status" == "$ALPNET_EXIT_INTERRUPTED" ]] && return 0
    done
    return 1
}

_alpnet_wait_all() {  # wait for the background runs: 1 (their commands named) if any failed, else
    # 3 if any stopped on a signal (resumable: the sbatch script requeues the job), else 0
    wait
    local f status cmd failed=0 stopped=0
    for f in "$_ALPNET_STATUS_DIR"/*; do
        [[ -e "$f" ]] || continue
        read -r status cmd < "$f"
        if [[ "$status" == "$ALPNET_EXIT_INTERRUPTED" ]]; then
            echo "stopped by a signal, snapshot saved (exit $status): $cmd" >&2
            stopped=1
        elif [[ "$status" != 0 ]]; then
            echo "failed (exit $status): $cmd" >&2
            failed=1
        fi
    done
    rm -rf "$_ALPNET_STATUS_DIR"
    if (( failed )); then return 1; fi
    if (( stopped )); then return "$ALPNET_EXIT_INTERRUPTED"; fi
    return 0
}

alpnet_main() {  # alpnet_main train|test [extra Sacred arguments...]
    local mode="$1"; shift
    if [[ "$mode" != train && "$mode" != test ]]; then
        echo "alpnet_main: mode must be train or test, got '$mode'" >&2; return 2
    fi
    : "${DATASET:?the launcher must set DATASET}"
    FOLDS="${FOLDS:-0 1 2 3 4}"; LABEL_GROUPS="${LABEL_GROUPS:-0 1}"; SCALES="${SCALES:-MIDDLE}"
    SUPP_ID="${SUPP_ID:-[-1]}"; NSTEP="${NSTEP:-100100}"; SNAPSHOT_INTERVAL="${SNAPSHOT_INTERVAL:-25000}"
    MAX_ITER="${MAX_ITER:-1000}"; DECAY="${DECAY:-0.95}"; SEED="${SEED:-1234}"; NWORKER="${NWORKER:-4}"
    MODEL="${MODEL:-dlfcn_res101}"; PROTO_GRID="${PROTO_GRID:-8}"; MIN_FG="${MIN_FG:-1}"
    LOGDIR="$(_alpnet_abs "${LOGDIR:-}")"; DATA_DIR="$(_alpnet_abs "${DATA_DIR:-}")"
    RELOAD_PATH="$(_alpnet_abs "${RELOAD_PATH:-}")"; STOP_FILE="$(_alpnet_abs "${STOP_FILE:-}")"
    cd "$ALPNET_ROOT" || return 2
    LOGDIR="${LOGDIR:-./runs}"
    local -a launch extra
    read -r -a launch <<< "${PYTHON:-python3}"
    read -r -a extra <<< "${EXTRA_ARGS:-}"
    local entry=training.py; [[ "$mode" == test ]] && entry=validation.py
    local fold group scale snap status=0
    _ALPNET_STATUS_DIR=""; _ALPNET_N_STARTED=0; PARALLEL="${PARALLEL:-1}"
    if [[ "${DRY_RUN:-0}" != 1 ]] && (( PARALLEL > 1 )); then
        _ALPNET_STATUS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/alpnet-runs.XXXXXX")"
    fi
    for group in $LABEL_GROUPS; do
        for fold in $FOLDS; do
            for scale in $SCALES; do
                if [[ -n "$STOP_FILE" && -e "$STOP_FILE" ]]; then
                    echo "stop requested ($STOP_FILE exists): not starting fold $fold, group $group" >&2
                    break 3
                fi
                _alpnet_args "$fold" "$group" "$scale" || return 2
                local -a args=("${ALPNET_ARGS[@]}")
                if [[ "$mode" == train ]]; then
                    echo "$(_alpnet_train_prefix "$fold" "$group" "$scale")" >&2
                    if [[ "${RESUME:-0}" == 1 ]] && snap="$(_alpnet_best_snapshot "$(_alpnet_exp_dir "$fold" "$group" "$scale")")"; then
                        if [[ "$(basename "$snap")" == "${NSTEP}.pth" ]]; then
                            echo "finished already ($snap): skipped" >&2; continue
                        fi
                        args+=('resume=True')
                    fi
                else
                    snap="$RELOAD_PATH"
                    if [[ -z "$snap" ]] && ! snap="$(_alpnet_best_snapshot "$(_alpnet_exp_dir "$fold" "$group" "$scale")")"; then
                        local where
                        where="$(_alpnet_exp_dir "$fold" "$group" "$scale")/<run>/snapshots/<step>.pth"
                        if [[ "${DRY_RUN:-0}" != 1 ]]; then
                            echo "no snapshot for fold $fold, group $group: looked for $where; train first" \
                                 "(examples/train_*.sh with the same LOGDIR) or set RELOAD_PATH" >&2
                            return 1
                        fi
                        snap="$where"
                    fi
                    args=("${args[@]/#exp_prefix=*/exp_prefix=test_vfold${fold}}" "reload_model_path=${snap}")
                fi
                [[ "${DRY_RUN:-0}" == 1 ]] || mkdir -p "$LOGDIR"
                _alpnet_run "${launch[@]}" "$entry" with "${args[@]}" "${extra[@]}" "$@" || { status=$?; break 3; }
            done
        done
    done
    if [[ -n "$_ALPNET_STATUS_DIR" ]]; then
        local waited=0
        _alpnet_wait_all || waited=$?
        (( waited == 0 )) || status="$waited"
    fi
    return "$status"
}
