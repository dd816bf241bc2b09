#!/usr/bin/env bash
# The whole method on the CPU, end to end, on synthetic scans (no download):
#
#   bash examples/quickstart.sh
#
# 1. packages: installs requirements.txt when an import fails
# 2. data:     synthetic CHAOS MR scans in the raw CHAOS layout (DICOM + PNG labels), then
#              `python -m data.prepare` (conversion, class index, superpixel pseudolabels)
# 3. training: self-supervised on superpixels (`training.py with quickstart`); training reads a
#              folder holding only the images and superpixels: no label of any scan
# 4. validation: 1-shot (docs/method.md, 'Validation protocol') of the untrained network
#              (snapshot 0, the weights training started from) and of the trained one, on the
#              held-out scans of fold 0
# 5. a table of per-organ Dice before/after, the run folders and the figures written there
#
# What differs from the paper's configuration, and why: the named config `quickstart` in
# config_ssl_upload.py and the card data/datasets/CHAOST2_128.json5.
#
# Environment (all optional; the test suite runs a shortened version with them):
#   QUICKSTART_OUT=./runs/quickstart   everything goes here (raw/, data/, train_view/, runs/)
#   QUICKSTART_SCANS=20                synthetic scans (5 folds; fold 0 validates scans 1-5,
#                                      scan 5 the support); at least 5
#   QUICKSTART_STEPS=                  training steps (default: n_steps of the named config)
#   QUICKSTART_SEED=0                  seed of the synthetic scans
#   QUICKSTART_GROUPS="0 1"            label groups validated (0: kidneys, 1: liver and spleen)
#   PRECISION=fp32                     fp32 | bf16 (training and validation; bf16 is about 2x
#                                      faster on CPUs with native bf16, and its table differs:
#                                      README, 'The two commands')
#   PYTHON=python3                     the interpreter
#   QUICKSTART_NO_INSTALL=1            never run pip (fail on a missing package instead)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START_DIR="$PWD"
abspath() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$START_DIR" "${1#./}"; fi; }

PY="${PYTHON:-python3}"
OUT="$(abspath "${QUICKSTART_OUT:-./runs/quickstart}")"
SCANS="${QUICKSTART_SCANS:-20}"
STEPS="${QUICKSTART_STEPS:-}"
SEED="${QUICKSTART_SEED:-0}"
GROUPS_="${QUICKSTART_GROUPS:-0 1}"
PRECISION="${PRECISION:-fp32}"
DATASET=CHAOST2_128
cd "$ROOT"
# OpenMP threads wait for work by spinning (libgomp's default) or by sleeping (PASSIVE). Spinning
# is faster until the cores are crowded, then it collapses; measured in
# docs/training.md, 'Speed on the CPU'. Threads sleep only when the load average at the start is
# at least 2 per core (examples/quickstart_tools.py omp-wait); an OMP_WAIT_POLICY set by the
# caller wins.
if [[ -z "${OMP_WAIT_POLICY:-}" ]]; then
    WAIT_POLICY="$("$PY" -m examples.quickstart_tools omp-wait)"
    if [[ -n "$WAIT_POLICY" ]]; then
        export OMP_WAIT_POLICY="$WAIT_POLICY"
        echo "the cores are busy (load average $(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo high)):" \
             "OpenMP threads sleep while waiting (OMP_WAIT_POLICY=$WAIT_POLICY)"
    fi
fi

if ! [[ "$SCANS" =~ ^[0-9]+$ ]] || (( SCANS < 5 )); then
    echo "QUICKSTART_SCANS=$SCANS: need at least 5 scans (5 folds)" >&2; exit 2
fi
if [[ -n "$STEPS" ]] && ! [[ "$STEPS" =~ ^[1-9][0-9]*$ ]]; then
    echo "QUICKSTART_STEPS=$STEPS: need a positive number of steps" >&2; exit 2
fi
if [[ "$PRECISION" != fp32 && "$PRECISION" != bf16 ]]; then
    echo "PRECISION=$PRECISION: choose fp32 or bf16" >&2; exit 2
fi
for GROUP in $GROUPS_; do
    if [[ "$GROUP" != 0 && "$GROUP" != 1 ]]; then
        echo "QUICKSTART_GROUPS=\"$GROUPS_\": label groups are 0 (kidneys) and 1 (liver, spleen)" >&2; exit 2
    fi
done

t0=$SECONDS
stage() { printf '\n=== [%4ds] %s\n' "$((SECONDS - t0))" "$*"; }

stage "1/5 packages"
# the import names of requirements.txt; find_spec locates a package without importing it (fast)
MODULES="torch torchvision sacred pkg_resources numpy scipy nibabel SimpleITK skimage cv2 json5 tqdm matplotlib PIL"
MISSING="$("$PY" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' $MODULES)"
if [[ -n "$MISSING" ]]; then
    if [[ -n "${QUICKSTART_NO_INSTALL:-}" ]]; then
        echo "missing package(s): $MISSING (QUICKSTART_NO_INSTALL is set: not installing)" >&2; exit 1
    fi
    echo "missing: $MISSING; installing requirements.txt into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install -r requirements.txt
else
    echo "all required packages are installed"
fi

stage "2/5 data: $SCANS synthetic CHAOS scans -> $OUT/raw, prepared -> $OUT/data"
if [[ -f "$OUT/raw/.complete_${SCANS}_${SEED}" ]]; then
    echo "synthetic scans already in $OUT/raw"
else
    "$PY" -m data.synthetic chaos --out "$OUT/raw" --n "$SCANS" --seed "$SEED"
    touch "$OUT/raw/.complete_${SCANS}_${SEED}"
fi
"$PY" -m data.prepare --dataset "$DATASET" --raw "$OUT/raw" --out "$OUT/data"
N_PREPARED="$(find "$OUT/data" -maxdepth 1 -name 'image_*.nii.gz' | wc -l | tr -d ' ')"
if [[ "$N_PREPARED" != "$SCANS" ]]; then   # the folds depend on the number of scans
    echo "$OUT/data holds $N_PREPARED scans, not QUICKSTART_SCANS=$SCANS: use a fresh QUICKSTART_OUT" >&2
    exit 1
fi
# training sees images and superpixels only (setting 1 needs no label): a folder of links
"$PY" -m examples.quickstart_tools training-view "$OUT/data" "$OUT/train_view" --dataset "$DATASET"

# one data folder per run: training reads the label-free view, validation the prepared folder
COMMON=(quickstart "path.log_dir=$OUT/runs" "precision=$PRECISION")
if [[ -n "$STEPS" ]]; then
    COMMON+=("n_steps=$STEPS")
fi

stage "3/5 self-supervised training (no labels)"
"$PY" training.py with "${COMMON[@]}" "path.${DATASET}_Superpix.data_dir=$OUT/train_view" \
    exp_prefix=quickstart_train
TRAIN_RUN="$("$PY" -m examples.quickstart_tools newest-run "$OUT/runs/mySSL_quickstart_train_${DATASET}_Superpix_sets_0_1shot")"
"$PY" -m examples.quickstart_tools init-snapshot "$TRAIN_RUN"

stage "4/5 1-shot validation of snapshot 0 (untrained) and of the trained snapshot, fold 0"
VAL_RUNS=()
for GROUP in $GROUPS_; do   # label group 0 tests the kidneys, 1 the liver and the spleen
    "$PY" validation.py with "${COMMON[@]}" "path.${DATASET}.data_dir=$OUT/data" \
        label_sets=$GROUP exp_prefix=quickstart_test \
        "reload_model_path=$TRAIN_RUN/snapshots"
    VAL_RUNS+=("$("$PY" -m examples.quickstart_tools newest-run "$OUT/runs/mySSL_quickstart_test_${DATASET}_Superpix_sets_${GROUP}_1shot")")
done

stage "5/5 summary"
"$PY" -m examples.quickstart_tools report --train "$TRAIN_RUN" --val "${VAL_RUNS[@]}"
printf '\nquickstart finished in %d s (precision %s)\n' "$((SECONDS - t0))" "$PRECISION"
"$PY" -c "from util.backends import cpu_native_bf16 as n; print('this CPU has native bf16: PRECISION=bf16 bash examples/quickstart.sh trains about 2x faster (and training.py with precision=bf16)' if n() else 'this CPU has no native bf16: keep precision=fp32 here (bf16 pays on GPUs and on CPUs with AVX512-BF16 or AMX)')"
