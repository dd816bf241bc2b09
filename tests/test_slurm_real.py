"""examples/frontier/train.sbatch and test.sbatch submitted with ``sbatch`` to a real Slurm.

The cluster is one node, this machine, started for the session by ``tests/slurmcluster.py``
(Debian's Slurm 22.05 here; docs/scale-out.md, 'Testing under a real Slurm'). Jobs run
``CLUSTER=cpu``: gloo ranks of one core, ResNet-18 from a random start, the tiny synthetic
scans, ``deterministic=True``. Without Slurm's programs every test here is skipped with one
reason. What needs several nodes (the MIOpen copies, ``--ntasks-per-node`` over nodes, NVMe
staging) stays with the stand-ins of ``tests/test_sbatch.py``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.slurmcluster import slurm_missing, start_cluster
from tests.slurmjobs import EXP, TEST_EXP, Jobs, equal_weights, logged_steps, rank_pids, runs
from tests.tinydata import build_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
K = 12                   # steps of the runs compared bit for bit
JOB_TIMEOUT_S = 240      # one job, requeues included, on a loaded 2-core machine
SIGNAL_AT = r"hooks - step 2:"        # rank 0's log line after step 2: the loop is running


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node Slurm for the session; skipped where it is not installed."""
    missing = slurm_missing()
    if missing:
        pytest.skip(missing)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def jobs(slurm, tmp_path_factory) -> Jobs:
    tiny = build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "CHAOST2", "CHAOST2", hw=64, depth=2)
    return Jobs(slurm, tmp_path_factory.mktemp("jobs"), tiny.data_dir)


@pytest.fixture(scope="module")
def reference(jobs, tmp_path_factory) -> Path:
    """The final snapshot of an uninterrupted 2-rank job of K steps."""
    logdir = tmp_path_factory.mktemp("reference")
    job = jobs.submit("train.sbatch", logdir, NSTEP=str(K))
    rec = jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "0"), jobs.output(job)
    (run,) = runs(logdir).values()
    return run["dir"] / "snapshots" / f"{K}.pth"


def _never_killed_by_the_signal(out: str) -> None:
    """Python's default action for SIGUSR1 (death, exit 138) never ended a rank."""
    assert "User defined signal" not in out and "exit code 138" not in out, out[-3000:]


def _stopped_then_resumed(jobs: Jobs, job: str, logdir: Path, reference: Path) -> int:
    """The job requeued once and completed; run 1 INTERRUPTED with one snapshot, run 2 resumed
    from it and ended with the reference's weights. The step it stopped after."""
    rec = jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    out = jobs.output(job)
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "1"), out[-3000:]
    _never_killed_by_the_signal(out)
    first, second = runs(logdir)[1], runs(logdir)[2]
    assert first["status"] == "INTERRUPTED" and len(first["snapshots"]) == 1, out[-3000:]
    (stop,) = first["snapshots"]
    assert 2 <= stop < K
    assert second["status"] == "COMPLETED" and second["snapshots"] == [K]
    assert logged_steps(second["dir"]) == list(range(stop + 1, K + 1))     # it continued, not restarted
    # each rank stopped: rank 0 exited 3 (its run INTERRUPTED), the other 0; no rank failed
    assert out.count("task 0: Exited with exit code 3") == 1 and "task 1: Exited" not in out
    assert equal_weights(second["dir"] / "snapshots" / f"{K}.pth", reference) == []
    return stop


@pytest.fixture(scope="module")
def batch_signal_jobs(jobs, tmp_path_factory):
    """Case 1 (batch shell) and 3: a training job stopped by `scancel --signal=USR1 --batch`
    mid-run, and test.sbatch submitted after it with --dependency=afterok."""
    logdir = tmp_path_factory.mktemp("usr1_batch")
    job = jobs.submit("train.sbatch", logdir, NSTEP=str(K))
    test_job = jobs.submit("test.sbatch", logdir, f"--dependency=afterok:{job}",
                           args=("init_weights=random", "write_figures=False"), NSTEP=str(K))
    jobs.wait_for_text(job, SIGNAL_AT, timeout=JOB_TIMEOUT_S)
    jobs.cluster.command("scancel", "--signal=USR1", "--batch", job)
    return job, test_job, logdir


def test_usr1_to_the_batch_shell_saves_requeues_and_resumes_exactly(jobs, batch_signal_jobs, reference):
    job, _, logdir = batch_signal_jobs
    _stopped_then_resumed(jobs, job, logdir, reference)
    assert "stopped by the time-limit signal (exit 3): requeueing" in jobs.output(job)


def test_usr1_to_the_ranks_alone_also_requeues_and_resumes_exactly(jobs, reference, tmp_path):
    """`scancel --signal=USR1 <job>` (no --batch) reaches the steps, not the batch shell."""
    job = jobs.submit("train.sbatch", tmp_path, NSTEP=str(K))
    jobs.wait_for_text(job, SIGNAL_AT, timeout=JOB_TIMEOUT_S)
    jobs.cluster.command("scancel", "--signal=USR1", job)
    _stopped_then_resumed(jobs, job, tmp_path, reference)
    out = jobs.output(job)
    assert "stopped by a signal to the ranks (exit 3): requeueing" in out and "USR1 (time limit near)" not in out


def test_time_limit_signal_requeues_by_the_clock(jobs, tmp_path):
    """No scancel: -t 1:00 with --signal=B:USR1@50 (Slurm checks limits every 30 s, so the signal
    comes 10-40 s after the start); the job saves, requeues, and its next start resumes."""
    job = jobs.submit("train.sbatch", tmp_path, "-t", "1:00", "--signal=B:USR1@50", NSTEP="100000")
    try:
        jobs.wait_for_text(job, r"restart 1\)(.|\n)*resuming from", timeout=JOB_TIMEOUT_S)
    finally:
        jobs.cluster.command("scancel", job, check=False)
    out = jobs.output(job)
    assert "stopped by the time-limit signal (exit 3): requeueing" in out
    _never_killed_by_the_signal(out)
    first = runs(tmp_path)[1]
    assert first["status"] == "INTERRUPTED" and len(first["snapshots"]) == 1
    assert f"resuming from {first['dir'] / 'snapshots' / str(first['snapshots'][0])}.pth" in out


def _metric_values(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {name: (m["steps"], m["values"]) for name, m in metrics.items()}


def test_dependent_test_job_waits_and_equals_one_validation_process(jobs, batch_signal_jobs, tmp_path):
    job, test_job, logdir = batch_signal_jobs
    rec = jobs.cluster.wait_done(test_job, timeout=2 * JOB_TIMEOUT_S)
    out = jobs.output(test_job, "alpnet-test")
    assert (rec["JobState"], rec["ExitCode"]) == ("COMPLETED", "0:0"), out[-3000:]
    train = jobs.cluster.job(job)
    assert train["Restarts"] == "1"                                        # it waited through the requeue
    assert rec["StartTime"] >= train["EndTime"]
    snapshot = runs(logdir)[2]["dir"] / "snapshots" / f"{K}.pth"
    # the srun line the launcher printed, run by one process with another log folder
    (line,) = [ln for ln in out.splitlines() if ln.startswith("srun ") and "validation.py" in ln]
    argv = shlex.split(line)
    args = argv[argv.index("validation.py") + 1:]
    assert f"reload_model_path={snapshot}" in args
    args = [f"path.log_dir={tmp_path}" if a.startswith("path.log_dir=") else a for a in args]
    one = subprocess.run([sys.executable, "validation.py", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**jobs.env(tmp_path), "OMP_NUM_THREADS": "1"}, timeout=JOB_TIMEOUT_S)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _metric_values(logdir / TEST_EXP.format(fold=0) / "1")
    assert "mar_val_batches_meanDice" in two
    assert two == _metric_values(tmp_path / TEST_EXP.format(fold=0) / "1")


def test_array_tasks_run_their_own_fold_on_their_own_port(jobs, tmp_path):
    job = jobs.submit("train.sbatch", tmp_path, "--array=0-1", "-o", str(jobs.folder / "%x-%A_%a.out"),
                      ranks=1, FOLDS="0 1", NSTEP="2")
    jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    ports = []
    for task, fold in ((0, 0), (1, 1)):                  # task i = pair i of LABEL_GROUPS (0) x FOLDS (0 1)
        out = jobs.output(f"{job}_{task}")
        assert f"FOLDS='{fold}' LABEL_GROUPS='0'" in out, out[-3000:]
        ports += re.findall(r"rank 0 at \S+:(\d+)", out)[:1]
        (run,) = runs(tmp_path, EXP.format(fold=fold)).values()
        assert run["status"] == "COMPLETED" and run["snapshots"] == [2]
        config = json.loads((run["dir"] / "config.json").read_text(encoding="utf-8"))
        assert config["eval_fold"] == fold
    assert len(set(ports)) == 2, ports


def test_killed_rank_ends_the_job_and_the_run_resumes_from_its_last_snapshot(jobs, tmp_path):
    job = jobs.submit("train.sbatch", tmp_path, NSTEP=str(K), SNAPSHOT_INTERVAL="2")
    jobs.wait_for_text(job, r"saved snapshot \S+ \(step 4\)", timeout=JOB_TIMEOUT_S)
    pids = rank_pids(job)
    assert sorted(pids) == [0, 1], pids
    killed_at = time.time()
    os.kill(pids[1], signal.SIGKILL)
    rec = jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    ended = datetime.fromisoformat(rec["EndTime"]).timestamp()
    assert ended - killed_at < 60                                     # kill-on-bad-exit, not a hang
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] != "0:0" and rec["Restarts"] == "0"
    (first,) = runs(tmp_path).values()
    # rank 0 learns of the dead peer in its next all-reduce and fails (not left RUNNING)
    assert first["status"] == "FAILED", jobs.output(job)[-3000:]
    last = max(first["snapshots"])
    assert 4 <= last < K
    again = jobs.submit("train.sbatch", tmp_path, NSTEP=str(K), SNAPSHOT_INTERVAL="2")
    rec = jobs.cluster.wait_done(again, timeout=JOB_TIMEOUT_S)
    assert (rec["JobState"], rec["ExitCode"]) == ("COMPLETED", "0:0"), jobs.output(again)[-3000:]
    second = runs(tmp_path)[2]
    assert second["status"] == "COMPLETED" and logged_steps(second["dir"]) == list(range(last + 1, K + 1))


def test_farm_mode_runs_two_single_process_runs_side_by_side(jobs, tmp_path):
    job = jobs.submit("train.sbatch", tmp_path, MODE="farm", FOLDS="0 1", NSTEP="6")
    rec = jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    out = jobs.output(job)
    assert (rec["JobState"], rec["ExitCode"]) == ("COMPLETED", "0:0"), out[-3000:]
    spans = []
    for fold in (0, 1):
        (run,) = runs(tmp_path, EXP.format(fold=fold)).values()
        assert run["status"] == "COMPLETED" and run["snapshots"] == [6]
        assert "1 rank(s) = effective batch 1" in (run["dir"] / "cout.txt").read_text(encoding="utf-8")
        spans.append((datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["stop_time"])))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, spans                          # the two runs overlapped in time


@pytest.mark.parametrize("options, extra, fix", [
    (("--ntasks-per-node=1",), {}, "submit with sbatch --ntasks-per-node=2 --cpus-per-task=1"),
    ((), {"LAUNCHER": "examples/no_such_launcher.sh"}, "use one of examples/train_*.sh"),
    ((), {"CLUSTER": "moon"}, "CLUSTER must be frontier, nvidia or cpu, got 'moon'"),
], ids=["fewer-cpus-than-ranks", "missing-launcher", "unknown-cluster"])
def test_mistakes_are_one_line_and_exit_2_before_any_srun(jobs, tmp_path, options, extra, fix):
    job = jobs.submit("train.sbatch", tmp_path, *options, **extra)
    rec = jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    lines = jobs.output(job).splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fix in lines[0], lines
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "2:0"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())             # no run started


def test_usr1_while_the_ranks_start_is_a_clean_stop(jobs, tmp_path):
    """USR1 5 s after the job starts: the ranks are importing; no rank dies of the signal, no run
    is left RUNNING, the job requeues and completes."""
    job = jobs.submit("train.sbatch", tmp_path, NSTEP="4")
    rec = jobs.cluster.wait(job, lambda r: r["JobState"] == "RUNNING", timeout=JOB_TIMEOUT_S, what="start")
    started = datetime.fromisoformat(rec["StartTime"]).timestamp()
    time.sleep(max(0.0, started + 5 - time.time()))
    jobs.cluster.command("scancel", "--signal=USR1", "--batch", job)
    rec = jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    out = jobs.output(job)
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "1"), out[-3000:]
    _never_killed_by_the_signal(out)
    found = runs(tmp_path)
    assert [r["status"] for r in found.values()][-1] == "COMPLETED"
    assert all(r["status"] in ("INTERRUPTED", "COMPLETED") for r in found.values()), found
    interrupted = [r for r in found.values() if r["status"] == "INTERRUPTED"]
    # a stop before the loop: one agreed step and its snapshot (or no run at all)
    assert all(r["snapshots"] == [1] for r in interrupted)
    assert interrupted or "stop requested" in out
