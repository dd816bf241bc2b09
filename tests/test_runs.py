"""``python -m util.runs`` (docs/training.md, 'Every run at a glance'): one line per Sacred run,
RUNNING with a stale heartbeat shown DIED, the resume command of INTERRUPTED and DIED runs;
and a training run killed with SIGKILL is shown DIED and its printed command resumes it."""
from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tinydata import build_tiny_dataset
from util.runs import DIED, main, read_run, run_states
from util.user_errors import EXIT_USER_ERROR

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 12, 1, 12, 0, 0)          # the 'now' the runs are judged at
ARGV = ["python3", "training.py", "with", "chaos_setting2", "n_steps=10", "resume=True"]


def iso(t: dt.datetime) -> str:
    return t.isoformat()


def write_run(folder: Path, status: str, *, start: dt.datetime, heartbeat: dt.datetime | None = None,
              stop: dt.datetime | None = None, losses=(), snapshots=(), n_steps=10, dice=(),
              argv=ARGV, training=None, continues=None) -> Path:
    """The files FileStorageObserver and training.py leave in a run folder."""
    folder.mkdir(parents=True)
    record = {"status": status, "start_time": iso(start), "host": {"hostname": "node7"},
              "heartbeat": iso(heartbeat) if heartbeat else None,
              "experiment": {"mainfile": "training.py", "name": "mySSL"},
              "meta": {"command": "main", "options": {"UPDATE": ARGV[3:]}}}
    if stop:
        record["stop_time"] = iso(stop)
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps({"n_steps": n_steps}), encoding="utf-8")
    metrics = {}
    if losses:
        metrics["loss"] = {"steps": list(range(1, len(losses) + 1)), "values": list(losses)}
    if dice:
        metrics["mar_val_batches_meanDice"] = {"steps": [10 * (i + 1) for i in range(len(dice))],
                                               "values": list(dice)}
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    info = {"snapshots": [{"step": s, "path": str(folder / "snapshots" / f"{s}.pth")} for s in snapshots]}
    if argv is not None:
        info["argv"] = list(argv)
    if training is not None:
        info["training"] = training
    if continues is not None:
        info["continues"] = continues
    (folder / "info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


@pytest.fixture
def runs(tmp_path):
    exp = tmp_path / "runs" / "mySSL__CHAOST2_Superpix_sets_0_1shot"
    t0 = NOW - dt.timedelta(hours=2)
    write_run(exp / "1", "COMPLETED", start=t0, stop=t0 + dt.timedelta(minutes=30),
              losses=[0.9, 0.7, 0.5], snapshots=[3], n_steps=3,
              training={"step": 3, "status": "completed"})
    write_run(exp / "2", "RUNNING", start=t0, heartbeat=NOW - dt.timedelta(seconds=30),
              losses=[0.8, 0.6])
    write_run(exp / "3", "RUNNING", start=t0, heartbeat=NOW - dt.timedelta(minutes=10),
              losses=[0.8, 0.6, 0.4, 0.3], snapshots=[2, 4])
    write_run(exp / "4", "INTERRUPTED", start=t0, stop=t0 + dt.timedelta(minutes=5),
              losses=[0.8], snapshots=[1], training={"step": 1, "status": "stopped"})
    write_run(tmp_path / "runs" / "mySSL_test_vfold0" / "1", "COMPLETED", start=t0,
              stop=t0 + dt.timedelta(minutes=1), dice=[0.4, 0.65, 0.5], argv=None)
    return tmp_path / "runs", exp


def test_each_run_its_state_steps_loss_dice_and_times(runs):
    root, exp = runs
    states = {f"{r.experiment}/{r.run_id}": r for r in run_states(root, now=NOW)}
    assert len(states) == 5
    done = states[f"{exp.name}/1"]
    assert (done.status, done.steps, done.n_steps, done.last_loss) == ("COMPLETED", 3, 3, 0.5)
    assert done.duration_s == 30 * 60 and done.host == "node7" and done.resume is None
    alive = states[f"{exp.name}/2"]                 # heartbeat 30 s ago < 2 min: still running
    assert (alive.status, alive.steps, alive.duration_s) == ("RUNNING", 2, 2 * 3600)
    dead = states[f"{exp.name}/3"]                  # 10 min without a heartbeat
    assert (dead.status, dead.recorded_status, dead.steps) == (DIED, "RUNNING", 4)
    assert dead.duration_s == 2 * 3600 - 10 * 60    # start to the last heartbeat
    assert dead.resume == ("python3 training.py with chaos_setting2 n_steps=10 "
                           f"resume_from={exp / '3' / 'snapshots' / '4.pth'}")   # newest snapshot
    stopped = states[f"{exp.name}/4"]
    assert stopped.resume.endswith(f"n_steps=10 resume_from={exp / '4' / 'snapshots' / '1.pth'}")
    val = states["mySSL_test_vfold0/1"]
    assert val.best_dice == 0.65 and val.steps is None


def test_stale_decides_between_running_and_died(runs):
    _, exp = runs
    assert read_run(exp / "2", now=NOW, stale_s=120).status == "RUNNING"
    assert read_run(exp / "2", now=NOW, stale_s=20).status == DIED        # 30 s > 20 s
    assert read_run(exp / "3", now=NOW, stale_s=3600).status == "RUNNING"  # 10 min < 1 h


def test_command_lines_filter_and_json(runs, capsys, monkeypatch):
    root, exp = runs
    monkeypatch.setattr("util.runs.utc_now", lambda: NOW)
    assert main([str(root), "--status", "died", "--stale", "2m"]) == 0
    line, resume = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{exp.name}/3  {DIED}  steps 4/10  loss 0.3  ")
    assert f"last heartbeat {(NOW - dt.timedelta(minutes=10)).isoformat(sep=' ')}" in line
    assert resume == ("  resume: python3 training.py with chaos_setting2 n_steps=10 "
                      f"resume_from={exp / '3' / 'snapshots' / '4.pth'}")
    assert main([str(root)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5 + 2       # 5 runs, 2 resume lines
    assert main([str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["experiment"], r["run_id"]) for r in rows) == sorted(
        [(exp.name, i) for i in "1234"] + [("mySSL_test_vfold0", "1")])


def test_no_runs_and_bad_options_are_one_error_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv in ([str(tmp_path / "empty")], [str(tmp_path / "missing")],
                 [str(tmp_path / "empty"), "--status", "SLEEPING"],
                 [str(tmp_path / "empty"), "--stale", "soon"]):
        assert main(argv) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)


@pytest.mark.slow
def test_a_killed_run_is_died_and_its_resume_command_continues_it(tmp_path):
    tiny = build_tiny_dataset(tmp_path / "c", "CHAOST2", hw=64, depth=2, block=16)
    logdir = tmp_path / "runs"
    args = ["training.py", "with", "chaos_setting2", "modelname=dlfcn_res18", "init_weights=random",
            "n_steps=1000", "num_workers=0", "print_interval=1", "save_snapshot_every=2",
            "input_size=[64,64]", f"path.log_dir={logdir}", f"path.CHAOST2_Superpix.data_dir={tiny.data_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True, encoding="utf-8",
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in proc.stdout:                     # snapshot 2 is written before step 3 starts
            if "step 3: loss" in line:
                proc.send_signal(signal.SIGKILL)     # no handler, no record: as the OOM killer
                break
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    (died,) = run_states(logdir, stale_s=0)          # no heartbeat can be newer than now
    assert died.status == DIED and died.recorded_status == "RUNNING" and died.steps is not None
    command = shlex.split(died.resume)
    assert command[0] == sys.executable and command[1:len(args) + 1] == args
    snap = Path(command[-1].split("=", 1)[1])
    assert snap.parent.parent == Path(died.folder) and snap.is_file()
    done = subprocess.run(command + [f"n_steps={int(snap.stem) + 1}"], cwd=ROOT, env=env, text=True,
                          encoding="utf-8", capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    second = next(r for r in run_states(logdir, stale_s=0) if r.folder != died.folder)
    assert second.status == "COMPLETED" and second.steps == int(snap.stem) + 1
    assert second.continues == str(Path(died.folder).resolve())
