"""Whole experiments in-process through Sacred (STYLE.md §1): the SPEC.md §7 launch lines run
unchanged except the data path, ``n_steps``, ``num_workers`` and ``init_weights``; a named-config
run stopped by SIGUSR1 and resumed with ``resume=True`` ends bit-identical to an uninterrupted
run (ResNet-18 encoder, 64 x 64 slices, deterministic, CPU)."""
from __future__ import annotations

import json
import os
import shlex
import signal

import pytest
import torch
from sacred.arg_parser import get_config_updates

import training  # noqa: F401  (registers the command 'main')
import util.training.loop as training_loop
from config_ssl_upload import ex
from tests.tinydata import build_tiny_dataset
from util.checkpoint import read_snapshot
from util.signals import TrainingInterrupted

pytestmark = pytest.mark.slow

# SPEC §7, verbatim (F, G, X, DATASET, LOGDIR, S substituted as the published launchers do)
LAUNCH_LINE = """python3 training.py with 'modelname=dlfcn_res101' 'usealign=True' 'optim_type=sgd' num_workers=4 \
  scan_per_load=-1 label_sets=G 'use_wce=True' exp_prefix=train_<DATASET>_lbgroupG_scale_MIDDLE_vfoldF \
  'clsname=grid_proto' n_steps=100100 exclude_cls_list=X eval_fold=F dataset=<DATASET> \
  proto_grid_size=8 max_iters_per_load=1000 min_fg_data=1 seed=1234 save_snapshot_every=25000 \
  superpix_scale=MIDDLE lr_step_gamma=0.95 path.log_dir=<LOGDIR> support_idx=<S>"""


def launch_updates(dataset: str, fold: int, group: int, excl: str, supp: str, logdir) -> dict:
    line = (LAUNCH_LINE.replace("<DATASET>", dataset).replace("lbgroupG", f"lbgroup{group}")
            .replace("label_sets=G", f"label_sets={group}").replace("vfoldF", f"vfold{fold}")
            .replace("eval_fold=F", f"eval_fold={fold}").replace("=X", f"={excl}")
            .replace("<LOGDIR>", str(logdir)).replace("<S>", supp))
    args = shlex.split(line.replace("\\\n", " "))
    assert args[:3] == ["python3", "training.py", "with"]
    updates, named = get_config_updates(args[3:])
    assert not named
    return updates


def run_dirs(logdir):
    return sorted(p.parent for p in logdir.rglob("run.json"))


@pytest.mark.parametrize("card, dataset, supp, excl", [
    ("CHAOST2", "CHAOST2_Superpix", "[4]", "[2,3]"),
    ("SABS", "SABS_Superpix", "[6]", "[1,6]"),
])
def test_spec_launch_line_runs_end_to_end(tmp_path, card, dataset, supp, excl):
    tiny = build_tiny_dataset(tmp_path / card, card, hw=64, depth=2, block=16)
    updates = launch_updates(dataset, 0, 1 if excl in ("[1,6]", "[1,4]") else 0, excl, supp,
                             tmp_path / "runs")
    updates.update(n_steps=2, num_workers=0, init_weights="random")
    updates["path"][dataset] = {"data_dir": str(tiny.data_dir)}
    run = ex.run("main", config_updates=updates)
    assert run.status == "COMPLETED" and run.result["step"] == 2
    (rd,) = run_dirs(tmp_path / "runs")
    assert rd.parent.name == f"mySSL_{run.config['exp_str']}"                 # SPEC §7 run directory
    assert run.config["exp_str"].startswith(f"train_{dataset}_lbgroup")
    assert (rd / "snapshots" / "2.pth").is_file() and (rd / "loss_curves.png").is_file()
    metrics = json.loads((rd / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["loss"]["steps"] == [1, 2] and len(metrics["align_loss"]["values"]) == 2
    snap = read_snapshot(rd / "snapshots" / "2.pth")
    assert snap["config"]["dataset"] == dataset and snap["config"]["modelname"] == "dlfcn_res101"
    assert "Unseen labels evaluated in testing" in (rd / "cout.txt").read_text(encoding="utf-8")


def test_named_config_run_stopped_by_signal_resumes_bit_identical(tmp_path, monkeypatch):
    tiny = build_tiny_dataset(tmp_path / "c", "CHAOST2", hw=64, depth=2, block=16)
    base = {"modelname": "dlfcn_res18", "init_weights": "random", "deterministic": True,
            "n_steps": 4, "num_workers": 0, "print_interval": 1, "save_snapshot_every": 4,
            "path": {"log_dir": str(tmp_path / "runs"), "CHAOST2_Superpix": {"data_dir": str(tiny.data_dir)}}}

    full = ex.run("main", config_updates={**base, "exp_prefix": "full"}, named_configs=["chaos_setting2"])
    assert full.result["status"] == "completed"

    real_step, calls = training_loop.train_step, []

    def step_then_signal(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_step(*args, **kw)

    monkeypatch.setattr(training_loop, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as stop:
        ex.run("main", config_updates={**base, "exp_prefix": "cut"}, named_configs=["chaos_setting2"])
    monkeypatch.setattr(training_loop, "train_step", real_step)
    part = ex.current_run
    assert part.status == "INTERRUPTED" and stop.value.step == 2 and stop.value.exit_code == 3
    (cut_dir,) = [d for d in run_dirs(tmp_path / "runs") if "cut" in d.parent.name]
    assert json.loads((cut_dir / "run.json").read_text(encoding="utf-8"))["status"] == "INTERRUPTED"
    assert stop.value.snapshot == str(cut_dir / "snapshots" / "2.pth")
    assert stop.value.command.endswith(f"resume_from={cut_dir.resolve() / 'snapshots' / '2.pth'}")
    rest = ex.run("main", config_updates={**base, "exp_prefix": "cut", "resume": True},
                  named_configs=["chaos_setting2"])
    assert rest.result["status"] == "completed" and rest.result["step"] == 4
    a = read_snapshot(full.result["snapshot"])["model"]
    b = read_snapshot(rest.result["snapshot"])["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert part.config["exclude_cls_list"] == [2, 3]                      # the named config applied
