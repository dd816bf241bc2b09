"""Stop and resume (docs/training.md, 'Stop and resume'): the schedule of the resumed config
applies, the keys a resumption may change are one table, the resume command is pasteable, and a
stopped command-line run is recorded INTERRUPTED with exit status 3.

The loop tests reuse the small stand-in model of tests/test_training.py (deterministic, CPU).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config_ssl_upload import ex
from tests.test_training import config, params_of, run_train, tiny  # noqa: F401  (fixture)
from tests.tinydata import build_tiny_dataset
from util.checkpoint import read_snapshot
from util.signals import EXIT_INTERRUPTED, TrainingInterrupted, raise_if_stopped, resume_command
from util.training.resume import MAY_CHANGE, REFUSED, RESUME_KEYS, check_resume_config, restore_schedule, resume_policy

ROOT = Path(__file__).resolve().parents[1]


def lr_of(snapshot: Path) -> float:
    return read_snapshot(snapshot)["optimizer"]["param_groups"][0]["lr"]


# ---- the schedule of the resumed config ---------------------------------------------------------

@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "default"])
def test_resume_to_a_longer_schedule_equals_the_straight_run(tiny, tmp_path, deterministic):
    """5 steps with milestones [2], resumed to 10 steps with [2, 9], equal 10 steps with [2, 9]
    straight: the milestone 9 of the resumed config applies (the saved scheduler's [2] would
    never decay again). On the CPU this holds without ``deterministic=True`` too."""
    _, straight = run_train(config(tiny, n_steps=10, lr_milestones=[2, 9], lr_step_gamma=0.1,
                                   save_snapshot_every=5, deterministic=deterministic),
                            tmp_path / "straight")
    first, _ = run_train(config(tiny, n_steps=5, lr_milestones=[2], lr_step_gamma=0.1,
                                save_snapshot_every=5, deterministic=deterministic),
                         tmp_path / "exp" / "1")
    assert first["status"] == "completed" and first["step"] == 5
    done, resumed = run_train(config(tiny, n_steps=10, lr_milestones=[2, 9], lr_step_gamma=0.1,
                                     save_snapshot_every=5, resume=True, deterministic=deterministic),
                              tmp_path / "exp" / "2", exp_dir=tmp_path / "exp")
    assert done["step"] == 10
    # lr 0.05 -> x0.1 at 2 -> x0.1 at 9, multiplied as MultiStepLR does
    assert lr_of(tmp_path / "exp" / "2" / "snapshots" / "10.pth") == 0.05 * 0.1 * 0.1
    assert lr_of(tmp_path / "straight" / "snapshots" / "10.pth") == 0.05 * 0.1 * 0.1
    a, b = params_of(straight), params_of(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- the table of keys a resumption may change ----------------------------------------------

def flat_keys(cfg, prefix=""):
    for key, value in cfg.items():
        if isinstance(value, dict):
            yield from flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_config_key_has_a_resume_policy():
    cfg = dict(ex.configurations[0]())
    unlisted = [k for k in flat_keys(cfg) if resume_policy(k)[1] == "not in the resume table"]
    assert unlisted == []
    assert resume_policy("seed")[0] == REFUSED and resume_policy("optim.lr")[0] == REFUSED
    assert resume_policy("path.CHAOST2.data_dir")[0] == MAY_CHANGE
    assert resume_policy("model.init_weights")[0] == MAY_CHANGE
    assert resume_policy("model.which_model")[0] == REFUSED
    assert resume_policy("a_key_nobody_listed") == (REFUSED, "not in the resume table")


@pytest.mark.parametrize("key, old, new", [
    ("seed", 5, 6), ("batch_size", 1, 2), ("dataset", "CHAOST2_Superpix", "SABS_Superpix"),
    ("eval_fold", 0, 1), ("modelname", "dlfcn_res101", "dlfcn_res18"), ("lr_step_gamma", 0.1, 0.5),
], ids=lambda v: str(v))
def test_refused_key_named_with_both_values(key, old, new):
    with pytest.raises(ValueError, match=rf"snap\.pth: cannot resume with a changed {key}: "
                                         rf"{old!r} in the snapshot, {new!r} now"):
        check_resume_config({key: old}, {key: new}, "snap.pth", 3)


def test_nested_refused_and_allowed_changes():
    old = {"optim": {"lr": 0.05}, "path": {"log_dir": "a"}, "n_steps": 5, "num_workers": 4,
           "print_interval": 100, "save_snapshot_every": 5, "lr_milestones": [2]}
    new = {"optim": {"lr": 0.05}, "path": {"log_dir": "b"}, "n_steps": 10, "num_workers": 0,
           "print_interval": 1, "save_snapshot_every": 7, "lr_milestones": [2, 9]}
    check_resume_config(old, new, "s.pth", 5)            # all of these may change
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.05 in the snapshot, 0\.1 now"):
        check_resume_config(old, {**new, "optim": {"lr": 0.1}}, "s.pth", 5)


def test_milestones_may_change_only_after_the_resume_step():
    check_resume_config({"lr_milestones": [2, 4]}, {"lr_milestones": [2, 9]}, "s.pth", 3)
    with pytest.raises(ValueError, match=r"lr_milestones up to step 5: \[2, 4\] in the snapshot, \[2\] now"):
        check_resume_config({"lr_milestones": [2, 4]}, {"lr_milestones": [2, 9]}, "s.pth", 5)


def test_a_milestone_at_the_resume_step_is_already_decided():
    """After 5 steps the scheduler has stepped 5 times: a milestone at 5 already set the learning
    rate the snapshot's next step uses, so it may not move; one at 6 still may."""
    check_resume_config({"lr_milestones": [2, 6]}, {"lr_milestones": [2, 9]}, "s.pth", 5)
    with pytest.raises(ValueError, match=r"lr_milestones up to step 5: \[2, 5\] in the snapshot, \[2\] now"):
        check_resume_config({"lr_milestones": [2, 5]}, {"lr_milestones": [2, 9]}, "s.pth", 5)


@pytest.mark.parametrize("position", [1, 2, 3, 5, 6])
def test_restored_learning_rate_equals_the_stepped_schedulers(position):
    """The learning rate restored at ``position`` equals a MultiStepLR stepped that many times,
    bit for bit, a milestone exactly at the position included (it decays the next step's rate)."""
    def fresh():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 5, 5], gamma=0.1)

    opt, sched = fresh()
    for _ in range(position):
        opt.step()
        sched.step()
    restored_opt, restored = fresh()
    restore_schedule(restored, restored_opt, {"last_epoch": position}, position)
    assert restored_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert restored.get_last_lr() == sched.get_last_lr() and restored.last_epoch == sched.last_epoch


def test_training_refuses_a_changed_seed_before_loading(tiny, tmp_path):
    run_train(config(tiny, n_steps=2), tmp_path / "exp" / "1")
    snap = tmp_path / "exp" / "1" / "snapshots" / "2.pth"
    with pytest.raises(ValueError, match=r"cannot resume with a changed seed: 5 in the snapshot, 6 now"):
        run_train(config(tiny, n_steps=4, seed=6, resume_from=str(snap)), tmp_path / "exp" / "2")
    assert not (tmp_path / "exp" / "2" / "snapshots").exists()


def test_refused_change_found_before_a_run_directory(tiny, tmp_path, capsys):
    """From the command line a refused change is one error line, exit 2, and no run directory."""
    import training
    from util.experiment.command_line import run_command_line

    run_train(config(tiny, n_steps=2), tmp_path / "first")
    snap = tmp_path / "first" / "snapshots" / "2.pth"
    capsys.readouterr()                                   # the first run's progress bar
    argv = ["training.py", "with", f"path.log_dir={tmp_path / 'runs'}",
            f"path.CHAOST2_Superpix.data_dir={tiny.data_dir}", "seed=6", f"resume_from={snap}"]
    assert run_command_line(ex, argv, main_command="main", check=training.check_training) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {snap}: cannot resume with a changed ")
    assert "seed: 5 in the snapshot, 6 now" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_every_refused_entry_is_refused_and_every_allowed_one_allowed():
    """The table is what check_resume_config applies (no key handled apart, milestones aside)."""
    for key, (policy, _) in RESUME_KEYS.items():
        dotted = key.replace("*", "x")
        old, new = {}, {}
        node_old, node_new, parts = old, new, dotted.split(".")
        for part in parts[:-1]:
            node_old = node_old.setdefault(part, {})
            node_new = node_new.setdefault(part, {})
        node_old[parts[-1]], node_new[parts[-1]] = 1, 2
        if key == "lr_milestones":
            continue
        if policy == REFUSED:
            with pytest.raises(ValueError, match=dotted.replace(".", r"\.")):
                check_resume_config(old, new, "s.pth", 1)
        else:
            check_resume_config(old, new, "s.pth", 1)


# ---- the resume command ---------------------------------------------------------------------

def test_resume_command_is_the_original_line_with_resume_from(tmp_path):
    snap = tmp_path / "run dir" / "snapshots" / "4.pth"
    argv = ["python3", "-u", "training.py", "with", "chaos_setting2", "exp_prefix=a b", "resume=True",
            "reload_model_path=/w.pth", "n_steps=10"]
    cmd = resume_command(argv, snap)
    assert shlex.split(cmd) == ["python3", "-u", "training.py", "with", "chaos_setting2", "exp_prefix=a b",
                                "n_steps=10", f"resume_from={snap.resolve()}"]
    assert shlex.split(resume_command(["python3", "training.py"], snap)) == [
        "python3", "training.py", "with", f"resume_from={snap.resolve()}"]


def test_raise_if_stopped_under_torchrun_gives_the_script_arguments(tmp_path):
    result = {"status": "stopped", "step": 3, "n_steps": 9, "snapshot": str(tmp_path / "3.pth"),
              "stopped_by": "SIGTERM"}
    with pytest.raises(TrainingInterrupted, match=r"torchrun command and these arguments:\n  "
                                                  r"training\.py with seed=1 resume_from=") as stop:
        raise_if_stopped(result, argv=["/usr/bin/python", "-u", "training.py", "with", "seed=1"],
                         is_main=True, env={"TORCHELASTIC_RUN_ID": "x"})
    assert stop.value.exit_code == EXIT_INTERRUPTED == 3 and stop.value.step == 3
    raise_if_stopped({**result, "status": "completed"}, argv=[], is_main=True)   # nothing raised
    raise_if_stopped(result, argv=[], is_main=False)        # other ranks exit 0 (module docstring)


# ---- the command line: SIGTERM, INTERRUPTED, exit 3, the printed command resumes ------------

@pytest.mark.slow
def test_sigterm_stops_the_command_line_run_and_its_command_resumes(tmp_path):
    tiny = build_tiny_dataset(tmp_path / "c", "CHAOST2", hw=64, depth=2, block=16)
    logdir = tmp_path / "runs"
    args = ["training.py", "with", "chaos_setting2", "modelname=dlfcn_res18", "init_weights=random",
            "n_steps=1000", "num_workers=0", "print_interval=1", "save_snapshot_every=1000",
            "input_size=[64,64]",
            f"path.log_dir={logdir}", f"path.CHAOST2_Superpix.data_dir={tiny.data_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True, encoding="utf-8",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    try:
        for line in proc.stdout:                     # wait for the first logged step
            lines.append(line)
            if "step 1: loss" in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == EXIT_INTERRUPTED, out
    (run_json,) = logdir.rglob("run.json")
    assert json.loads(run_json.read_text(encoding="utf-8"))["status"] == "INTERRUPTED"
    (snap,) = (run_json.parent / "snapshots").glob("*.pth")
    info = json.loads((run_json.parent / "info.json").read_text(encoding="utf-8"))["training"]
    assert (info["step"], info["stopped_by"]) == (int(snap.stem), "SIGTERM")
    command = out.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    argv = shlex.split(command)
    assert argv[1:len(args) + 1] == args and argv[-1] == f"resume_from={snap.resolve()}"
    # paste it, ending two steps later
    done = subprocess.run(argv + [f"n_steps={int(snap.stem) + 2}"], cwd=ROOT, env=env, text=True,
                          encoding="utf-8", capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    second = [p for p in logdir.rglob("run.json") if p != run_json]
    assert json.loads(second[0].read_text(encoding="utf-8"))["status"] == "COMPLETED"
    assert (second[0].parent / "snapshots" / f"{int(snap.stem) + 2}.pth").is_file()
