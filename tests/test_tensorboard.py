"""TensorBoard event files (docs/training.md, 'Live curves in TensorBoard'): the real server
serves a finished tiny run's loss scalars over HTTP; TensorBoard's own event reader finds every
step once across a stop and resume, and across a resume from a killed run that had gone past its
snapshot; validation writes its metrics and figures at the snapshot's step."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import util.training.loop as training_loop
from tests.test_training import FakeRun, config, run_train, tiny  # noqa: F401  (fixture)
from util.tensorboard_log import EVENT_GLOB

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

SERVER_START_LIMIT_S = 180      # a deadline for a loaded machine, not a timing assert


def steps_of(run_dir: Path, tag: str = "loss/total") -> list[int]:
    """The steps TensorBoard's reader shows for ``tag`` in one run folder (purges applied)."""
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read().decode("utf-8"))


def serve_scalars(logdir: Path, run: str, tag: str) -> list:
    """Start ``tensorboard`` on a free localhost port, wait until it serves ``tag`` of ``run``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                             "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    deadline = time.monotonic() + SERVER_START_LIMIT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                data = get_json(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}")
                if data:
                    return data
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"tensorboard served nothing for {run}/{tag}: "
                             f"{proc.stderr.read() if proc.poll() is not None else 'still starting'}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_tensorboard_server_serves_a_finished_runs_losses(tiny, tmp_path):
    run = FakeRun()
    run_train(config(tiny, n_steps=4), tmp_path / "runs" / "1", run=run)
    assert list((tmp_path / "runs" / "1").glob(EVENT_GLOB))
    served = serve_scalars(tmp_path / "runs", "1", "loss/query_ce")
    # [wall time, step, value] per step; the values are the Sacred scalars (float32 in the file)
    assert [s for _, s, _ in served] == [1, 2, 3, 4]
    want = dict(run.scalars["loss"])
    assert [v for _, _, v in served] == pytest.approx([want[s] for s in (1, 2, 3, 4)], rel=1e-6)


def _stop_during_step(monkeypatch, n: int) -> None:
    real_step, calls = training_loop.train_step, []

    def step_then_signal(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGUSR1)                 # arrives during step n
        return real_step(*args, **kw)

    monkeypatch.setattr(training_loop, "train_step", step_then_signal)


def test_steps_once_each_across_a_stop_and_resume(tiny, tmp_path, monkeypatch):
    """5 steps stopped after step 2, resumed to 5: the reader finds 1, 2 in the first run folder
    and 3, 4, 5 in the second, each step once, none restarted at 1."""
    _stop_during_step(monkeypatch, 2)
    res, _ = run_train(config(tiny, n_steps=5), tmp_path / "exp" / "1", run=FakeRun())
    monkeypatch.undo()
    assert res["status"] == "stopped" and res["step"] == 2
    resumed = FakeRun()
    run_train(config(tiny, n_steps=5, resume_from=res["snapshot"]), tmp_path / "exp" / "2", run=resumed)
    first, second = steps_of(tmp_path / "exp" / "1"), steps_of(tmp_path / "exp" / "2")
    assert first == [1, 2] and second == [3, 4, 5]
    assert sorted(first + second) == list(range(1, 6))
    assert resumed.info["continues"] == {"snapshot": str(Path(res["snapshot"]).resolve()), "step": 2,
                                         "run_dir": str((tmp_path / "exp" / "1").resolve())}


def test_a_resume_from_an_earlier_snapshot_supersedes_the_later_steps(tiny, tmp_path):
    """A run that wrote steps 1..3 but whose newest usable snapshot is step 2 (as a run killed
    after step 3 with snapshots every 2 steps): resumed from 2.pth to 5 steps, the first folder
    shows 1, 2 and the second 3, 4, 5: step 3 once."""
    run_train(config(tiny, n_steps=3, save_snapshot_every=2), tmp_path / "exp" / "1", run=FakeRun())
    assert steps_of(tmp_path / "exp" / "1") == [1, 2, 3]
    snap = tmp_path / "exp" / "1" / "snapshots" / "2.pth"
    run_train(config(tiny, n_steps=5, resume_from=str(snap)), tmp_path / "exp" / "2", run=FakeRun())
    assert steps_of(tmp_path / "exp" / "1") == [1, 2]
    assert steps_of(tmp_path / "exp" / "2") == [3, 4, 5]


def test_tensorboard_false_writes_no_event_file(tiny, tmp_path):
    run_train(config(tiny, n_steps=2, tensorboard=False), tmp_path / "run", run=FakeRun())
    assert (tmp_path / "run" / "snapshots" / "2.pth").is_file()
    assert not list((tmp_path / "run").glob(EVENT_GLOB))
