"""Distributed helpers on ``torch.distributed``; every helper degrades to one process.

A distributed launch is detected from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` or from
Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` (with ``MASTER_ADDR``/``MASTER_PORT``
set by the launcher script). Otherwise the run is a single process, exactly as before.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "launch_rank", "select_device", "is_dist", "get_rank", "get_world_size",
           "is_main_process", "barrier", "all_reduce_sum", "any_rank_flag", "cleanup"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched distributed).

    Usable before the process group exists, e.g. to attach Sacred observers on rank 0 only.
    """
    env = _launch_env()
    return env[0] if env else 0


def _launch_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun or Slurm variables, or None."""
    if _env_int("RANK") is not None and _env_int("WORLD_SIZE") is not None:
        return _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK") or 0
    if _env_int("SLURM_PROCID") is not None and _env_int("SLURM_NTASKS") is not None \
            and (_env_int("SLURM_NTASKS") or 1) > 1:
        return _env_int("SLURM_PROCID"), _env_int("SLURM_NTASKS"), _env_int("SLURM_LOCALID") or 0
    return None


def select_device(gpu_id: int | None, local_rank: int | None = None) -> torch.device:
    """The CUDA/ROCm device of ``local_rank`` (distributed) or ``gpu_id``; the CPU without a GPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = local_rank if local_rank is not None else (gpu_id or 0)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(gpu_id: int | None = 0, *, force_cpu: bool = False) -> DistInfo:
    """Initialise the process group when launched by torchrun or srun; else one process.

    Raises:
        RuntimeError: a distributed launch without ``MASTER_ADDR``/``MASTER_PORT``.
    """
    env = _launch_env()
    if env is None:
        device = torch.device("cpu") if force_cpu else select_device(gpu_id)
        return DistInfo(0, 1, 0, device, None)
    rank, world_size, local_rank = env
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise RuntimeError(
                f"distributed launch detected (rank {rank} of {world_size}) but {var} is not set: "
                "export MASTER_ADDR (the first node's host name) and MASTER_PORT (a free port) "
                "before srun, as examples/frontier/train.sbatch does")
    use_gpu = torch.cuda.is_available() and not force_cpu
    device = select_device(None, local_rank) if use_gpu else torch.device("cpu")
    backend = "nccl" if use_gpu else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                device_id=device if use_gpu else None)
    return DistInfo(rank, world_size, local_rank, device, backend)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op on one process) and return it."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank_flag(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on any rank (all-reduce MAX)."""
    if not is_dist():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device or torch.device("cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
