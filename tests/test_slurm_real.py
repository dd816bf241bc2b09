"""examples/frontier/train.sbatch and test.sbatch submitted with ``sbatch`` to a real Slurm.

The cluster is one node, this machine, started for the session by ``tests/slurmcluster.py``
(Debian's Slurm 22.05 here; docs/scale-out.md, 'Testing under a real Slurm'). Jobs run
``CLUSTER=cpu``: gloo ranks of one core, ResNet-18 from a random start, the tiny synthetic
scans, ``deterministic=True``. Without Slurm's programs every test here is skipped with one
reason. What needs several nodes (the MIOpen copies, ``--ntasks-per-node`` over nodes, NVMe
staging) stays with the stand-ins of ``tests/test_sbatch.py``.

Each test's jobs are driven by a scenario (submit, wait for a line of the output, signal,
wait for the end) that starts, with those of the other selected tests, when the module's
first test asks for them: the node claims twice its cores, so two 2-rank jobs run side by
side and one job's waiting (a requeue's hold, the time-limit clock) overlaps another's work.
The tests then check what their scenario saw.
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
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.slurmcluster import slurm_missing, start_cluster
from tests.slurmjobs import EXP, TEST_EXP, Jobs, equal_weights, logged_steps, rank_pids, runs
from tests.tinydata import build_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
K = 12                   # steps of the runs compared bit for bit
JOB_TIMEOUT_S = 400      # one job, requeues included, beside the others on a loaded 2-core machine
HUNG_TIMEOUT_S = 120     # a job whose rank was killed must end well before this (kill-on-bad-exit)
SIGNAL_AT = r"hooks - step 2:"        # rank 0's log line after step 2: the loop is running
OVERSUBSCRIBE = 2
SCENARIOS: dict[str, Callable[[Jobs, Path], dict[str, Any]]] = {}


def scenario(fn: Callable[[Jobs, Path], dict[str, Any]]) -> Callable[[Jobs, Path], dict[str, Any]]:
    SCENARIOS[fn.__name__] = fn
    return fn


def needs(*names: str) -> Callable:
    """The scenarios a test checks (started for the selected tests only)."""
    def mark(test: Callable) -> Callable:
        test.scenarios = names
        return test
    return mark


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node Slurm for the session; skipped where it is not installed."""
    missing = slurm_missing()
    if missing:
        pytest.skip(missing)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"), oversubscribe=OVERSUBSCRIBE)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def flows(slurm, request, tmp_path_factory) -> dict[str, Future]:
    """Every scenario the selected tests of this module need, running in threads."""
    # depth 4: the kidneys on slices 0 and 1, one per rank (at depth 2 rank 1 counted nothing, and
    # validation that never summed the ranks went unseen)
    tiny = build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "CHAOST2", "CHAOST2", hw=64, depth=4)
    jobs = Jobs(slurm, tmp_path_factory.mktemp("jobs"), tiny.data_dir)
    wanted = [name for name in SCENARIOS
              if any(name in getattr(item.function, "scenarios", ()) for item in request.session.items
                     if item.module is request.module)]
    pool = ThreadPoolExecutor(max_workers=max(len(wanted), 1))
    futures = {}
    for name in wanted:                  # in SCENARIOS' order: the longest chains are submitted first
        futures[name] = pool.submit(SCENARIOS[name], jobs, tmp_path_factory.mktemp(name))
        time.sleep(0.2)
    futures["jobs"] = Future()
    futures["jobs"].set_result(jobs)
    yield futures
    pool.shutdown(wait=False, cancel_futures=True)


def outcome(flows: dict[str, Future], name: str) -> dict[str, Any]:
    return flows[name].result(timeout=3 * JOB_TIMEOUT_S)


def _signalled(jobs: Jobs, logdir: Path, how: tuple[str, ...], with_test_job: bool = False) -> dict[str, Any]:
    job = jobs.submit("train.sbatch", logdir, NSTEP=str(K))
    test_job = None
    if with_test_job:
        test_job = jobs.submit("test.sbatch", logdir, f"--dependency=afterok:{job}",
                               args=("init_weights=random", "write_figures=False"), NSTEP=str(K))
    jobs.wait_for_text(job, SIGNAL_AT, timeout=JOB_TIMEOUT_S)
    jobs.cluster.command("scancel", "--signal=USR1", *how, job)
    rec = jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    found = {"rec": rec, "out": jobs.output(job), "logdir": logdir, "job": job}
    if test_job is not None:
        found["test_rec"] = jobs.cluster.wait_done(test_job, timeout=JOB_TIMEOUT_S)
        found["test_out"] = jobs.output(test_job, "alpnet-test")
        found["train_rec"] = jobs.cluster.job(job)
    return found


@scenario
def usr1_batch(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    """Cases 1 and 3: `scancel --signal=USR1 --batch` mid-run, test.sbatch after it (afterok)."""
    return _signalled(jobs, logdir, ("--batch",), with_test_job=True)


@scenario
def reference(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    """An uninterrupted 2-rank job of K steps."""
    job = jobs.submit("train.sbatch", logdir, NSTEP=str(K))
    return {"rec": jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S), "out": jobs.output(job), "logdir": logdir}


@scenario
def usr1_ranks(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    """`scancel --signal=USR1 <job>` (no --batch): the steps get it, not the batch shell."""
    return _signalled(jobs, logdir, ())


@scenario
def killed_rank(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    job = jobs.submit("train.sbatch", logdir, NSTEP=str(K), SNAPSHOT_INTERVAL="2")
    jobs.wait_for_text(job, r"saved snapshot \S+ \(step 4\)", timeout=JOB_TIMEOUT_S)
    pids = rank_pids(job)
    killed_at = time.time()
    os.kill(pids[1], signal.SIGKILL)
    rec = jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    first = runs(logdir)[1]
    again = jobs.submit("train.sbatch", logdir, NSTEP=str(K), SNAPSHOT_INTERVAL="2")
    return {"pids": pids, "killed_at": killed_at, "rec": rec, "out": jobs.output(job), "first": first,
            "again": jobs.cluster.wait_done(again, timeout=JOB_TIMEOUT_S), "again_out": jobs.output(again),
            "logdir": logdir}


@scenario
def hung_rank(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    """Rank 0 frozen (SIGSTOP: as a rank stuck in a GPU collective that never returns, which
    gloo's dropped connection does not show), then rank 1 killed: only srun's
    ``--kill-on-bad-exit`` can end the job. None for "rec" when it did not end in time."""
    job = jobs.submit("train.sbatch", logdir, NSTEP=str(K))
    jobs.wait_for_text(job, SIGNAL_AT, timeout=JOB_TIMEOUT_S)
    pids = rank_pids(job)
    os.kill(pids[0], signal.SIGSTOP)
    killed_at = time.time()
    os.kill(pids[1], signal.SIGKILL)
    try:
        rec = jobs.cluster.wait_done(job, timeout=HUNG_TIMEOUT_S)
    except TimeoutError:
        rec = None
        jobs.cluster.command("scancel", job, check=False)
    return {"pids": pids, "killed_at": killed_at, "rec": rec, "out": jobs.output(job), "logdir": logdir}


@scenario
def early_usr1(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    """USR1 to the batch shell 5 s after the job starts, while the ranks are starting."""
    job = jobs.submit("train.sbatch", logdir, NSTEP="4")
    rec = jobs.cluster.wait(job, lambda r: r["JobState"] == "RUNNING", timeout=JOB_TIMEOUT_S, what="start")
    started = datetime.fromisoformat(rec["StartTime"]).timestamp()
    time.sleep(max(0.0, started + 5 - time.time()))
    jobs.cluster.command("scancel", "--signal=USR1", "--batch", job)
    return {"rec": jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S), "out": jobs.output(job), "logdir": logdir}


@scenario
def time_limit(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    """No scancel: -t 1:00 with --signal=B:USR1@55; slurmctld checks time limits every 30 s,
    so the signal comes at the first check 5 s or more after the start. One rank."""
    job = jobs.submit("train.sbatch", logdir, "-t", "1:00", "--signal=B:USR1@55", ranks=1, NSTEP="100000")
    try:
        jobs.wait_for_text(job, r"restart 1\)(.|\n)*resuming from", timeout=JOB_TIMEOUT_S)
    finally:
        jobs.cluster.command("scancel", job, check=False)
    return {"out": jobs.output(job), "logdir": logdir}


@scenario
def array(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    job = jobs.submit("train.sbatch", logdir, "--array=0-1", "-o", str(jobs.folder / "%x-%A_%a.out"),
                      ranks=1, FOLDS="0 1", NSTEP="2")
    jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S)
    return {"outs": [jobs.output(f"{job}_{task}") for task in (0, 1)], "logdir": logdir}


@scenario
def farm(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    job = jobs.submit("train.sbatch", logdir, MODE="farm", FOLDS="0 1", NSTEP="6")
    return {"rec": jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S), "out": jobs.output(job), "logdir": logdir}


MISTAKES = {"fewer-cpus-than-ranks": (("--ntasks-per-node=1",), {}),
            "missing-launcher": ((), {"LAUNCHER": "examples/no_such_launcher.sh"}),
            "unknown-cluster": ((), {"CLUSTER": "moon"})}


@scenario
def mistakes(jobs: Jobs, logdir: Path) -> dict[str, Any]:
    submitted = {name: jobs.submit("train.sbatch", logdir / name, *options, **extra)
                 for name, (options, extra) in MISTAKES.items()}
    return {name: (jobs.cluster.wait_done(job, timeout=JOB_TIMEOUT_S), jobs.output(job), logdir / name)
            for name, job in submitted.items()}


# --------------------------------------------------------------------------- the checks

def _never_killed_by_the_signal(out: str) -> None:
    """Python's default action for SIGUSR1 (death, exit 138) never ended a rank."""
    assert "User defined signal" not in out and "exit code 138" not in out, out[-3000:]


def _final_snapshot(flows: dict[str, Future]) -> Path:
    ref = outcome(flows, "reference")
    assert (ref["rec"]["JobState"], ref["rec"]["ExitCode"]) == ("COMPLETED", "0:0"), ref["out"][-3000:]
    (run,) = runs(ref["logdir"]).values()
    return run["dir"] / "snapshots" / f"{K}.pth"


def _stopped_then_resumed(found: dict[str, Any], reference: Path) -> None:
    """The job requeued once and completed; run 1 INTERRUPTED with one snapshot, run 2 resumed
    from it and ended with the reference's weights, bit for bit."""
    rec, out = found["rec"], found["out"]
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "1"), out[-3000:]
    _never_killed_by_the_signal(out)
    first, second = runs(found["logdir"])[1], runs(found["logdir"])[2]
    assert first["status"] == "INTERRUPTED" and len(first["snapshots"]) == 1, out[-3000:]
    (stop,) = first["snapshots"]
    assert 2 <= stop < K
    assert second["status"] == "COMPLETED" and second["snapshots"] == [K]
    assert logged_steps(second["dir"]) == list(range(stop + 1, K + 1))     # it continued, not restarted
    # each rank stopped: rank 0 exited 3 (its run INTERRUPTED), the other 0; no rank failed
    assert out.count("task 0: Exited with exit code 3") == 1 and "task 1: Exited" not in out
    assert equal_weights(second["dir"] / "snapshots" / f"{K}.pth", reference) == []


@needs("usr1_batch", "reference")
def test_usr1_to_the_batch_shell_saves_requeues_and_resumes_exactly(flows):
    found = outcome(flows, "usr1_batch")
    _stopped_then_resumed(found, _final_snapshot(flows))
    assert "stopped by the time-limit signal (exit 3): requeueing" in found["out"]


@needs("usr1_ranks", "reference")
def test_usr1_to_the_ranks_alone_also_requeues_and_resumes_exactly(flows):
    found = outcome(flows, "usr1_ranks")
    _stopped_then_resumed(found, _final_snapshot(flows))
    assert "stopped by a signal to the ranks (exit 3): requeueing" in found["out"]
    assert "USR1 (time limit near)" not in found["out"]                     # the batch shell got nothing


@needs("time_limit")
def test_time_limit_signal_requeues_by_the_clock(flows):
    found = outcome(flows, "time_limit")
    out = found["out"]
    assert "stopped by the time-limit signal (exit 3): requeueing" in out
    _never_killed_by_the_signal(out)
    first = runs(found["logdir"])[1]
    assert first["status"] == "INTERRUPTED" and len(first["snapshots"]) == 1
    assert f"resuming from {first['dir'] / 'snapshots' / str(first['snapshots'][0])}.pth" in out


def _metric_values(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {name: (m["steps"], m["values"]) for name, m in metrics.items()}


@needs("usr1_batch")
def test_dependent_test_job_waits_and_equals_one_validation_process(flows, tmp_path):
    found = outcome(flows, "usr1_batch")
    rec, out, train = found["test_rec"], found["test_out"], found["train_rec"]
    assert (rec["JobState"], rec["ExitCode"]) == ("COMPLETED", "0:0"), out[-3000:]
    assert train["Restarts"] == "1" and train["JobState"] == "COMPLETED"   # it waited through the requeue
    assert rec["StartTime"] >= train["EndTime"]
    snapshot = runs(found["logdir"])[2]["dir"] / "snapshots" / f"{K}.pth"
    # the srun line the launcher printed, run by one process with another log folder
    (line,) = [ln for ln in out.splitlines() if ln.startswith("srun ") and "validation.py" in ln]
    argv = shlex.split(line)
    args = argv[argv.index("validation.py") + 1:]
    assert f"reload_model_path={snapshot}" in args
    args = [f"path.log_dir={tmp_path}" if a.startswith("path.log_dir=") else a for a in args]
    env = outcome(flows, "jobs").env(tmp_path)
    one = subprocess.run([sys.executable, "validation.py", *args], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=JOB_TIMEOUT_S)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _metric_values(found["logdir"] / TEST_EXP.format(fold=0) / "1")
    assert "mar_val_batches_meanDice" in two
    assert two == _metric_values(tmp_path / TEST_EXP.format(fold=0) / "1")


@needs("array")
def test_array_tasks_run_their_own_fold_on_their_own_port(flows):
    found = outcome(flows, "array")
    ports = []
    for task, fold in ((0, 0), (1, 1)):                  # task i = pair i of LABEL_GROUPS (0) x FOLDS (0 1)
        out = found["outs"][task]
        assert f"FOLDS='{fold}' LABEL_GROUPS='0'" in out, out[-3000:]
        ports += re.findall(r"rank 0 at \S+:(\d+)", out)[:1]
        (run,) = runs(found["logdir"], EXP.format(fold=fold)).values()
        assert run["status"] == "COMPLETED" and run["snapshots"] == [2]
        config = json.loads((run["dir"] / "config.json").read_text(encoding="utf-8"))
        assert config["eval_fold"] == fold
    assert len(set(ports)) == 2, ports


@needs("killed_rank")
def test_killed_rank_ends_the_job_and_the_run_resumes_from_its_last_snapshot(flows):
    found = outcome(flows, "killed_rank")
    rec, first = found["rec"], found["first"]
    assert sorted(found["pids"]) == [0, 1], found["pids"]
    ended = datetime.fromisoformat(rec["EndTime"]).timestamp()
    assert ended - found["killed_at"] < 60                            # kill-on-bad-exit, not a hang
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] != "0:0" and rec["Restarts"] == "0"
    # rank 0 learns of the dead peer in its next all-reduce and fails: recorded FAILED, not RUNNING
    assert first["status"] == "FAILED", found["out"][-3000:]
    last = max(first["snapshots"])
    assert 4 <= last < K
    assert (found["again"]["JobState"], found["again"]["ExitCode"]) == ("COMPLETED", "0:0"), found["again_out"]
    second = runs(found["logdir"])[2]
    assert second["status"] == "COMPLETED" and logged_steps(second["dir"]) == list(range(last + 1, K + 1))


@needs("hung_rank")
def test_killed_rank_beside_a_frozen_one_ends_the_job(flows):
    """Ending a step, Slurm sends SIGCONT and SIGTERM, then SIGKILL after KillWait. Here the
    thawed rank 0 meets the dead peer in its next all-reduce and records FAILED; a rank stuck in
    a collective that never returns is killed without a word and its run stays RUNNING with a
    stopped heartbeat, which ``python -m util.runs`` shows DIED once the heartbeat is older than
    its --stale limit (2 minutes). Either way no run looks alive for ever."""
    from util.runs import DEFAULT_STALE_S, DIED, read_run

    found = outcome(flows, "hung_rank")
    rec = found["rec"]
    assert rec is not None, f"job still running {HUNG_TIMEOUT_S} s after a rank was killed: " + found["out"][-3000:]
    assert sorted(found["pids"]) == [0, 1], found["pids"]
    assert datetime.fromisoformat(rec["EndTime"]).timestamp() - found["killed_at"] < 60
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] != "0:0" and rec["Restarts"] == "0"
    (run,) = runs(found["logdir"]).values()
    assert run["status"] in ("FAILED", "RUNNING"), run
    later = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=DEFAULT_STALE_S + 60)  # UTC, naive
    assert read_run(run["dir"], now=later).status in ("FAILED", DIED)


@needs("farm")
def test_farm_mode_runs_two_single_process_runs_side_by_side(flows):
    found = outcome(flows, "farm")
    assert (found["rec"]["JobState"], found["rec"]["ExitCode"]) == ("COMPLETED", "0:0"), found["out"][-3000:]
    spans = []
    for fold in (0, 1):
        (run,) = runs(found["logdir"], EXP.format(fold=fold)).values()
        assert run["status"] == "COMPLETED" and run["snapshots"] == [6]
        assert "1 rank(s) = effective batch 1" in (run["dir"] / "cout.txt").read_text(encoding="utf-8")
        spans.append((datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["stop_time"])))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, spans                          # the two runs overlapped in time


@needs("mistakes")
@pytest.mark.parametrize("name, fix", [
    ("fewer-cpus-than-ranks", "submit with sbatch --ntasks-per-node=2 --cpus-per-task=1"),
    ("missing-launcher", "use one of examples/train_*.sh"),
    ("unknown-cluster", "CLUSTER must be frontier, nvidia or cpu, got 'moon'"),
])
def test_mistakes_are_one_line_and_exit_2_before_any_srun(flows, name, fix):
    rec, out, logdir = outcome(flows, "mistakes")[name]
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fix in lines[0], lines
    assert rec["JobState"] == "FAILED" and rec["ExitCode"] == "2:0"
    assert not logdir.exists()                                          # no run started


@needs("early_usr1")
def test_usr1_while_the_ranks_start_is_a_clean_stop(flows):
    """No rank dies of the signal, no run is left RUNNING, the job requeues and completes."""
    found = outcome(flows, "early_usr1")
    rec, out = found["rec"], found["out"]
    assert (rec["JobState"], rec["ExitCode"], rec["Restarts"]) == ("COMPLETED", "0:0", "1"), out[-3000:]
    _never_killed_by_the_signal(out)
    found_runs = runs(found["logdir"])
    assert [r["status"] for r in found_runs.values()][-1] == "COMPLETED"
    assert all(r["status"] in ("INTERRUPTED", "COMPLETED") for r in found_runs.values()), found_runs
    interrupted = [r for r in found_runs.values() if r["status"] == "INTERRUPTED"]
    # a stop before the loop: one agreed step and its snapshot (or no run at all)
    assert all(r["snapshots"] == [1] for r in interrupted)
    assert interrupted or "stop requested" in out


def test_skip_reasons_name_the_fix(monkeypatch):
    """Without the programs: the apt-get line; installed but not root: how to run as root."""
    from tests import slurmcluster
    monkeypatch.setattr(slurmcluster.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurmcluster.os, "geteuid", lambda: 0)
    assert slurmcluster.slurm_missing() is None
    monkeypatch.setattr(slurmcluster.os, "geteuid", lambda: 1000)
    assert slurmcluster.slurm_missing() == slurmcluster.NOT_ROOT_REASON
    assert "sudo" in slurmcluster.NOT_ROOT_REASON
    monkeypatch.setattr(slurmcluster.shutil, "which", lambda name: None)
    monkeypatch.setattr(slurmcluster.Path, "exists", lambda self: False)
    assert slurmcluster.slurm_missing() == "slurmctld not found: apt-get install slurm-wlm munge"
