"""examples/*.sh launchers: the SPEC 7 launch lines (DRY_RUN=1), overrides, snapshot lookup, resume.

The expected lines are SPEC.md section 7's template, transcribed below and filled in by the
test; the launchers' output is compared argument by argument (shlex), so quoting may differ.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interpreter import prepend_python3

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(autouse=True)
def _own_python3(monkeypatch, tmp_path_factory):
    """The launchers' ``python3`` (card look-ups) is the interpreter running the tests."""
    prepend_python3(monkeypatch, tmp_path_factory.getbasetemp() / "python3-bin")

# SPEC.md section 7, verbatim (F fold, G label group, X excluded list, S support index).
SPEC_TRAIN_LINE = (
    "python3 training.py with 'modelname=dlfcn_res101' 'usealign=True' 'optim_type=sgd' num_workers=4 "
    "scan_per_load=-1 label_sets=G 'use_wce=True' exp_prefix=train_<DATASET>_lbgroupG_scale_MIDDLE_vfoldF "
    "'clsname=grid_proto' n_steps=100100 exclude_cls_list=X eval_fold=F dataset=<DATASET> "
    "proto_grid_size=8 max_iters_per_load=1000 min_fg_data=1 seed=1234 save_snapshot_every=25000 "
    "superpix_scale=MIDDLE lr_step_gamma=0.95 path.log_dir=<LOGDIR> support_idx=<S>")

# SPEC 1/7: setting 2 excludes the test organs of the label group
MR = {"dataset": "CHAOST2_Superpix", "support": "[4]", "exclu": {0: "[2,3]", 1: "[1,4]"}}
CT = {"dataset": "SABS_Superpix", "support": "[6]", "exclu": {0: "[2,3]", 1: "[1,6]"}}


def spec_train_argv(d: dict, fold: int, group: int, logdir: str, exclu: str | None = None) -> list[str]:
    line = (SPEC_TRAIN_LINE.replace("<DATASET>", d["dataset"]).replace("<LOGDIR>", logdir)
            .replace("<S>", d["support"]).replace("label_sets=G", f"label_sets={group}")
            .replace("lbgroupG", f"lbgroup{group}").replace("vfoldF", f"vfold{fold}")
            .replace("eval_fold=F", f"eval_fold={fold}")
            .replace("exclude_cls_list=X", f"exclude_cls_list={exclu or d['exclu'][group]}"))
    return shlex.split(line)


def spec_test_argv(d: dict, fold: int, group: int, logdir: str, snapshot: str) -> list[str]:
    """``validation.py with <the same arguments> reload_model_path=<snapshot> exp_prefix=test_vfoldF``."""
    argv = spec_train_argv(d, fold, group, logdir)
    argv[1] = "validation.py"
    argv = [f"exp_prefix=test_vfold{fold}" if a.startswith("exp_prefix=") else a for a in argv]
    return argv + [f"reload_model_path={snapshot}"]


def launch(script: str, *args: str, cwd: Path = ROOT, check: bool = True, **env: str
           ) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if k not in ("FOLDS", "LABEL_GROUPS", "SETTING", "EXCLU", "DATA_DIR", "RELOAD_PATH", "RESUME",
                         "PYTHON", "EXTRA_ARGS", "LOGDIR", "DRY_RUN", "STOP_FILE", "DATASET", "SUPP_ID")}
    full.update(env)
    res = subprocess.run(["bash", str(EXAMPLES / script), *args], cwd=cwd, env=full, text=True, encoding="utf-8",
                         capture_output=True, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"{script} exited {res.returncode}:\n{res.stderr}")
    return res


def lines(res: subprocess.CompletedProcess) -> list[list[str]]:
    return [shlex.split(line) for line in res.stdout.splitlines() if line.strip()]


def fake_run(logdir: Path, exp: str, run: int, steps: list[int]) -> Path:
    snaps = logdir / exp / str(run) / "snapshots"
    snaps.mkdir(parents=True)
    for s in steps:
        (snaps / f"{s}.pth").write_bytes(b"")
    return snaps


@pytest.mark.parametrize("script, d", [("train_ssl_abdominal_mri.sh", MR), ("train_ssl_abdominal_ct.sh", CT)],
                         ids=["mri", "ct"])
def test_train_launchers_print_the_spec_lines_for_all_folds_and_groups(tmp_path, script, d):
    res = launch(script, DRY_RUN="1", LOGDIR=str(tmp_path))
    expected = [spec_train_argv(d, f, g, str(tmp_path)) for g in (0, 1) for f in range(5)]
    assert lines(res) == expected
    assert not list(tmp_path.iterdir()), "DRY_RUN must not create anything"


@pytest.mark.parametrize("script, d", [("test_ssl_abdominal_mri.sh", MR), ("test_ssl_abdominal_ct.sh", CT)],
                         ids=["mri", "ct"])
def test_test_launchers_take_the_highest_step_snapshot_of_the_training_run(tmp_path, script, d):
    g, f = 1, 3
    exp = f"mySSL_train_{d['dataset']}_lbgroup{g}_scale_MIDDLE_vfold{f}_{d['dataset']}_sets_{g}_1shot"
    fake_run(tmp_path, exp, 1, [100, 200])
    newest = fake_run(tmp_path, exp, 2, [300, 1000]) / "1000.pth"    # 1000 > 300 numerically
    fake_run(tmp_path, exp, 3, [50])                                   # a later run, fewer steps
    (tmp_path / exp / "4").mkdir()                                     # a run that saved nothing yet
    res = launch(script, DRY_RUN="1", LOGDIR=str(tmp_path), FOLDS=str(f), LABEL_GROUPS=str(g))
    assert lines(res) == [spec_test_argv(d, f, g, str(tmp_path), str(newest))]


def test_test_launcher_reload_path_override_and_missing_snapshot(tmp_path):
    snap = tmp_path / "given.pth"
    res = launch("test_ssl_abdominal_mri.sh", DRY_RUN="1", LOGDIR=str(tmp_path), FOLDS="0",
                 LABEL_GROUPS="0", RELOAD_PATH=str(snap))
    assert lines(res) == [spec_test_argv(MR, 0, 0, str(tmp_path), str(snap))]
    res = launch("test_ssl_abdominal_mri.sh", LOGDIR=str(tmp_path), FOLDS="0", LABEL_GROUPS="0",
                 PYTHON="false", check=False)
    assert res.returncode == 1
    assert "no snapshot for fold 0, group 0" in res.stderr and "RELOAD_PATH" in res.stderr
    assert str(tmp_path / "mySSL_train_CHAOST2_Superpix_lbgroup0_scale_MIDDLE_vfold0") in res.stderr


def test_overrides_from_environment_and_arguments(tmp_path):
    res = launch("train_ssl_abdominal_mri.sh", "init_weights=random", "input_size=[64,64]",
                 DRY_RUN="1", LOGDIR=str(tmp_path), FOLDS="1 3", LABEL_GROUPS="1", SETTING="1",
                 DATA_DIR="/data/chaos", EXTRA_ARGS="precision=bf16",
                 PYTHON="torchrun --standalone --nproc_per_node=2")
    got = lines(res)
    assert len(got) == 2
    for f, argv in zip((1, 3), got):
        base = spec_train_argv(MR, f, 1, str(tmp_path), exclu="[]")   # setting 1: nothing excluded
        assert argv == (["torchrun", "--standalone", "--nproc_per_node=2"] + base[1:]
                        + ["path.CHAOST2_Superpix.data_dir=/data/chaos", "path.CHAOST2.data_dir=/data/chaos",
                           "precision=bf16", "init_weights=random", "input_size=[64,64]"])


def test_runs_from_another_directory_and_really_executes(tmp_path):
    """Without DRY_RUN the command runs in the repository root with the printed arguments."""
    recorder = tmp_path / "record.py"
    out = tmp_path / "calls.jsonl"
    recorder.write_text("import json, os, sys\n"
                        f"open({str(out)!r}, 'a').write(json.dumps([os.getcwd()] + sys.argv[1:]) + '\\n')\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    launch("train_ssl_abdominal_ct.sh", cwd=elsewhere, LOGDIR="./logs", FOLDS="2", LABEL_GROUPS="0",
           PYTHON=f"{sys.executable} {recorder}")
    calls = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    logdir = str(elsewhere / "logs")           # relative to where the launcher was started
    assert calls == [[str(ROOT)] + spec_train_argv(CT, 2, 0, logdir)[1:]]
    assert (elsewhere / "logs").is_dir()


def test_resume_continues_unfinished_and_skips_finished_runs(tmp_path):
    ex = "mySSL_train_CHAOST2_Superpix_lbgroup0_scale_MIDDLE_vfold{}_CHAOST2_Superpix_sets_0_1shot"
    fake_run(tmp_path, ex.format(0), 1, [25000, 100100])      # finished: skipped
    fake_run(tmp_path, ex.format(1), 1, [25000])              # interrupted: resume=True
    res = launch("train_ssl_abdominal_mri.sh", DRY_RUN="1", RESUME="1", LOGDIR=str(tmp_path),
                 FOLDS="0 1 2", LABEL_GROUPS="0")
    assert lines(res) == [spec_train_argv(MR, 1, 0, str(tmp_path)) + ["resume=True"],
                          spec_train_argv(MR, 2, 0, str(tmp_path))]           # never started: fresh
    assert "finished already" in res.stderr


def test_stop_file_stops_before_the_next_run(tmp_path):
    stop = tmp_path / "stop"
    stop.write_text("", encoding="utf-8")
    res = launch("train_ssl_abdominal_mri.sh", DRY_RUN="1", LOGDIR=str(tmp_path), STOP_FILE=str(stop))
    assert res.stdout == "" and "stop requested" in res.stderr


C0_CARD = """{
  name: "C0", modality: "MR", labels: ["BG", "LV-BP", "LV-MYO", "RV"],
  label_groups: { pa_all: [1, 2, 3], groups: [[2, 3], [1, 3], [1, 2]] },
  normalisation: "per_volume_zscore", body_mask_threshold: 0.0,
  superpixel: { MIDDLE: { scale: 1.0, sigma: 1.0, min_size: 400 } },
  files: { image: "image_{id}.nii.gz", label: "label_{id}.nii.gz", superpix: "superpix-{scale}_{id}.nii.gz",
           fgmask: "fgmask_{id}.nii.gz", classmap: "classmap_{min_tp}.json" },
  data_dir: "./data/C0/normalized/", support_idx: [2],
}"""


def test_cardiac_launchers_follow_the_card(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "C0.json5").write_text(C0_CARD, encoding="utf-8")
    c0 = {"dataset": "C0_Superpix", "support": "[2]", "exclu": {0: "[]", 1: "[]", 2: "[]"}}
    res = launch("train_ssl_cardiac.sh", DRY_RUN="1", LOGDIR=str(tmp_path), FOLDS="0",
                 SSL_ALPNET_CARDS=str(cards))
    assert lines(res) == [spec_train_argv(c0, 0, g, str(tmp_path)) for g in (0, 1, 2)]
    res = launch("test_ssl_cardiac.sh", DRY_RUN="1", LOGDIR=str(tmp_path), FOLDS="4", LABEL_GROUPS="2",
                 SETTING="2", RELOAD_PATH="/s.pth", SSL_ALPNET_CARDS=str(cards))
    c0["exclu"][2] = "[3]"                      # setting 2, group 2: test labels pa_all - {1, 2}
    assert lines(res) == [spec_test_argv(c0, 4, 2, str(tmp_path), "/s.pth")]


def test_supervised_baseline_uses_the_plain_dataset(tmp_path):
    res = launch("train_supervised_baseline.sh", DRY_RUN="1", DATASET="SABS", LOGDIR=str(tmp_path), FOLDS="0")
    sabs = dict(CT, dataset="SABS")                 # exclusions computed from the card = SPEC's
    assert lines(res) == [spec_train_argv(sabs, 0, g, str(tmp_path)) for g in (0, 1)]
    res = launch("test_supervised_baseline.sh", DRY_RUN="1", LOGDIR=str(tmp_path), FOLDS="1",
                 LABEL_GROUPS="0", RELOAD_PATH="/b.pth")
    assert lines(res) == [spec_test_argv(dict(MR, dataset="CHAOST2"), 1, 0, str(tmp_path), "/b.pth")]
    res = launch("train_supervised_baseline.sh", DRY_RUN="1", DATASET="CHAOST2_Superpix", check=False)
    assert res.returncode == 2 and "use DATASET=CHAOST2" in res.stderr


def test_unknown_label_group_is_named(tmp_path):
    res = launch("train_supervised_baseline.sh", DRY_RUN="1", LABEL_GROUPS="7", check=False)
    assert res.returncode == 2 and "label group 7 does not exist for CHAOST2" in res.stderr


def test_parallel_runs_overlap_and_failures_are_reported(tmp_path):
    log = tmp_path / "log"
    rec = tmp_path / "rec.sh"      # a stand-in interpreter: logs start/end, fold 1 fails with 5
    rec.write_text('fold=""; for a in "$@"; do case "$a" in eval_fold=*) fold="${a#*=}";; esac; done\n'
                   f'echo "start $fold $(date +%s%N)" >> {log}\nsleep 1.5\n'
                   f'echo "end $fold $(date +%s%N)" >> {log}\n[ "$fold" != 1 ] || exit 5\n')
    res = launch("train_ssl_abdominal_mri.sh", LOGDIR=str(tmp_path / "runs"), FOLDS="0 1 2", LABEL_GROUPS="0",
                 PARALLEL="2", PYTHON=f"bash {rec}", check=False)
    assert res.returncode == 1 and "failed (exit 5)" in res.stderr and "eval_fold=1" in res.stderr
    events = [line.split() for line in log.read_text(encoding="utf-8").splitlines()]
    assert sorted(e[1] for e in events if e[0] == "start") == ["0", "1", "2"]
    times = {(e[0], e[1]): int(e[2]) for e in events}
    assert times[("start", "1")] < times[("end", "0")], "folds 0 and 1 must run at the same time"
    assert times[("start", "2")] >= min(times[("end", "0")], times[("end", "1")]), "at most 2 at a time"


def test_parallel_run_stopped_by_a_signal_starts_no_more_and_exits_3(tmp_path):
    """MODE=farm's launcher: a run that exits 3 (stopped by a signal, snapshot saved) is not a
    failure; no further run starts, the others are waited for, the launcher exits 3 and
    train.sbatch requeues the job."""
    log = tmp_path / "log"
    rec = tmp_path / "rec.sh"      # fold 0 stops with 3 after 0.5 s, fold 1 runs 2 s, fold 2 must never start
    rec.write_text('fold=""; for a in "$@"; do case "$a" in eval_fold=*) fold="${a#*=}";; esac; done\n'
                   f'echo "start $fold" >> {log}\nif [ "$fold" = 0 ]; then sleep 0.5; exit 3; fi\nsleep 2\n'
                   f'echo "end $fold" >> {log}\n')
    res = launch("train_ssl_abdominal_mri.sh", LOGDIR=str(tmp_path / "runs"), FOLDS="0 1 2", LABEL_GROUPS="0",
                 PARALLEL="2", PYTHON=f"bash {rec}", check=False)
    assert res.returncode == 3, res.stderr
    assert "stopped by a signal, snapshot saved (exit 3)" in res.stderr and "failed" not in res.stderr
    assert sorted(log.read_text(encoding="utf-8").split("\n")[:-1]) == ["end 1", "start 0", "start 1"]


def test_sequential_run_stopped_by_a_signal_exits_3(tmp_path):
    stopped = tmp_path / "stopped.sh"
    stopped.write_text("exit 3\n", encoding="utf-8")
    res = launch("train_ssl_abdominal_mri.sh", LOGDIR=str(tmp_path / "runs"), FOLDS="0 1", LABEL_GROUPS="0",
                 PYTHON=f"bash {stopped}", check=False)
    assert res.returncode == 3 and "vfold1" not in res.stderr      # fold 1 not started
