"""Jobs of ``examples/frontier/*.sbatch`` on the real test cluster (``tests/slurmcluster.py``):
their environment, submission, output, the Sacred runs they write and their ranks' processes.

Every job runs ``CLUSTER=cpu`` with ``python3`` being the tests' interpreter
(``tests/interpreter.py``), the tiny synthetic scans, ResNet-18 from a random start, gloo ranks
of one core each, no loader workers and one thread per rank (the machine has 2 cores).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from tests.interpreter import with_python3
from tests.slurmcluster import SlurmCluster
from tests.test_sbatch import CLEARED

__all__ = ["Jobs", "EXP", "TEST_EXP", "EXTRA_ARGS", "rank_pids", "equal_weights"]

ROOT = Path(__file__).resolve().parents[1]
FRONTIER = ROOT / "examples" / "frontier"
EXP = "mySSL_train_CHAOST2_Superpix_lbgroup0_scale_MIDDLE_vfold{fold}_CHAOST2_Superpix_sets_0_1shot"
TEST_EXP = "mySSL_test_vfold{fold}_CHAOST2_Superpix_sets_0_1shot"
EXTRA_ARGS = ("init_weights=random", "deterministic=True", "print_interval=1")
# long enough never to reach the limit or its signal unless a test asks for them
QUIET_LIMIT = ("-t", "30:00", "--signal=B:USR1@60")
POLL_S = 0.25


@dataclasses.dataclass
class Jobs:
    """Submits jobs to ``cluster`` writing under ``folder`` (job outputs, LOGDIR per job)."""

    cluster: SlurmCluster
    folder: Path
    data_dir: Path

    def env(self, logdir: Path, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in CLEARED and not k.startswith("SLURM_")}
        base.update(CLUSTER="cpu", GPUS_PER_NODE="2", FOLDS="0", LABEL_GROUPS="0", LOGDIR=str(logdir),
                    DATA_DIR=str(self.data_dir), MODEL="dlfcn_res18", NWORKER="0", MAX_ITER="10",
                    SNAPSHOT_INTERVAL="1000", OMP_NUM_THREADS="1", NODE_LOCAL_TMP=str(self.folder))
        base.update(extra)
        return with_python3(base, self.folder / "python3-bin")

    def submit(self, script: str, logdir: Path, *options: str, args: tuple[str, ...] = EXTRA_ARGS,
               ranks: int = 2, **extra: str) -> str:
        """``sbatch`` ``examples/frontier/<script>`` from the repository root: its job id."""
        env = self.env(logdir, GPUS_PER_NODE=str(ranks), **extra)
        return self.cluster.sbatch(f"--ntasks-per-node={ranks}", "--cpus-per-task=1", *QUIET_LIMIT,
                                   "-o", str(self.folder / "%x-%j.out"), *options,
                                   str(FRONTIER / script), *args, env=env, cwd=ROOT)

    def output(self, job_id: str, name: str = "alpnet-train") -> str:
        path = self.folder / f"{name}-{job_id}.out"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def wait_for_text(self, job_id: str, pattern: str, *, timeout: float, name: str = "alpnet-train") -> str:
        """Until the job's output matches ``pattern`` (a regex): the output then."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.output(job_id, name)
            if re.search(pattern, out):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id}: no {pattern!r} in its output after {timeout:.0f} s:\n"
                                   f"{out[-3000:]}")
            time.sleep(POLL_S)


def runs(logdir: Path, exp: str = EXP.format(fold=0)) -> dict[int, dict[str, Any]]:
    """The Sacred runs of an experiment: run id -> run.json plus its snapshot steps."""
    found = {}
    for run in sorted((logdir / exp).glob("[0-9]*"), key=lambda p: int(p.name)):
        record = json.loads((run / "run.json").read_text(encoding="utf-8"))
        snaps = run / "snapshots"
        record["snapshots"] = sorted(int(p.stem) for p in snaps.glob("*.pth")) if snaps.is_dir() else []
        record["dir"] = run
        found[int(run.name)] = record
    return found


def logged_steps(run_dir: Path) -> list[int]:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return metrics["loss"]["steps"]


def rank_pids(job_id: str, entry: str = "training.py") -> dict[int, int]:
    """rank -> process id of the job's ranks running ``entry`` (read from /proc: the tests run
    on the node, as the same user)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if env.get(b"SLURM_JOB_ID") == job_id.encode() and Path(os.fsdecode(cmd[0])).name.startswith("python") \
                and any(c.endswith(entry.encode()) for c in cmd):
            found[int(env[b"SLURM_PROCID"])] = int(proc.name)
    return found


def equal_weights(a: Path, b: Path) -> list[str]:
    """The model tensors that differ between two snapshots (bit for bit); empty when none."""
    wa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    wb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    assert wa.keys() == wb.keys()
    return [k for k in wa if not torch.equal(wa[k], wb[k])]
