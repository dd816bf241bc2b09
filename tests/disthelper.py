"""Run a test body in N local ranks (gloo, CPU) and return each rank's result to the parent.

``run_ranks(fn, *args)`` spawns ``world_size`` processes, sets the launcher's variables in each
(torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` or Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/
``SLURM_LOCALID`` and the srun step's ``SLURM_STEP_ID``/``SLURM_STEP_NUM_TASKS``, plus
``MASTER_ADDR``/``MASTER_PORT`` on a free port), calls ``fn(*args)`` and
sends its return value back. ``fn`` must be a module-level function (pickled by name) and its
result picklable. A rank that raises fails the whole call with that rank's traceback; the other
ranks (possibly blocked in a collective) are terminated. Children use one thread each: the CI
machine has 2 cores.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import sys
import time
import traceback
from typing import Any, Callable

__all__ = ["free_port", "rank_env", "run_ranks", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 120.0
POLL_S = 0.5
# fork: the children inherit the imported torch (seconds saved per test on 2 cores); spawn elsewhere
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() and sys.platform == "linux" else "spawn"
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
               "SLURM_LOCALID", "SLURM_NODEID", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NUM_TASKS",
               "SLURM_JOB_ID", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port that was free a moment ago (bind port 0 and read what the OS chose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int, launcher: str = "torchrun") -> dict[str, str]:
    """The variables a launcher sets for ``rank`` of ``world_size`` ranks on one node."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    if launcher == "torchrun":
        env.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world_size))
    elif launcher == "none":             # a plain `python3 training.py`: no launcher variables
        env = {}
    elif launcher == "slurm":
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(world_size), SLURM_LOCALID=str(rank),
                   SLURM_NODEID="0", SLURM_STEP_ID="0", SLURM_STEPID="0",
                   SLURM_STEP_NUM_TASKS=str(world_size))
    else:
        raise ValueError(f"launcher must be 'torchrun', 'slurm' or 'none', got {launcher!r}")
    return env


def _child(rank: int, env: dict[str, str], fn: Callable[..., Any], args: tuple, results: Any) -> None:
    for var in LAUNCH_VARS:
        os.environ.pop(var, None)
    os.environ.update(env)
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)
    try:
        value = fn(*args)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        results.put((rank, False, traceback.format_exc()))
        return
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    results.put((rank, True, value))


def run_ranks(fn: Callable[..., Any], *args: Any, world_size: int = 2, launcher: str = "torchrun",
              timeout: float = DEFAULT_TIMEOUT_S, extra_env: dict[str, str] | None = None,
              start_method: str = START_METHOD) -> list[Any]:
    """``[fn(*args) on rank 0, ..., on rank world_size-1]``, each rank its own spawned process.

    Raises:
        RuntimeError: a rank raised (its traceback in the message), exited without a result, or
            the ranks did not finish within ``timeout`` seconds.
    """
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = rank_env(rank, world_size, port, launcher)
        env.update(extra_env or {})
        p = ctx.Process(target=_child, args=(rank, env, fn, args, results), name=f"rank{rank}", daemon=True)
        p.start()
        procs.append(p)
    out: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world_size:
            try:
                rank, ok, value = results.get(timeout=POLL_S)
            except queue.Empty:
                missing = sorted(set(range(world_size)) - set(out))
                crashed = [r for r in missing if procs[r].exitcode not in (None, 0)]
                if crashed:
                    raise RuntimeError(f"ranks {crashed} died without a result (exit codes "
                                       f"{[procs[r].exitcode for r in crashed]})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ranks {missing} gave no result within {timeout:.0f} s "
                                       f"(exit codes {[p.exitcode for p in procs]})") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} of {world_size} failed:\n{value}")
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=10 if len(out) == world_size else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        results.close()
    return [out[r] for r in range(world_size)]
