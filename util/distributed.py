"""Distributed helpers on ``torch.distributed``; every helper degrades to one process.

A distributed launch is detected from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` or from
Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` (with ``MASTER_ADDR``/``MASTER_PORT``
exported by the batch script, as ``examples/frontier/train.sbatch`` does). Otherwise the run is a
single process, exactly as before. Each rank uses the GPU of its local rank (``SLURM_LOCALID`` or
``LOCAL_RANK``, not ``rank % device_count``), or device 0 when the launcher made one GPU visible
per task (``srun --gpus-per-task=1``); without a GPU, the CPU with ``gloo``.

The launcher owns the environment: nothing here writes ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "init_distributed", "launch_rank", "launcher_name", "select_device", "is_dist",
           "get_rank", "get_world_size", "is_main_process", "barrier", "all_reduce_sum", "any_rank_flag",
           "broadcast_object", "wrap_ddp", "unwrap", "cleanup"]

log = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``local_rank`` on the node, the
    ``device`` it computes on, and the ``backend`` (``'nccl'``, ``'gloo'``; None: one process)."""
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
    """The integer value of environment variable ``name``; None when unset or empty.

    Raises:
        ValueError: the variable is set but is not an integer.
    """
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer "
                         "(set by torchrun or srun; unset it for a single-process run)") from err


def _launch_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun or Slurm variables, or None (one process).

    torchrun wins when both are present (``srun torchrun`` sets both; torchrun's are the ones that
    describe this process). A Slurm step of one task is a single process.

    Raises:
        ValueError: a variable is not an integer, or the rank is outside ``[0, world_size)``.
    """
    launched = _launcher()
    if launched is None:
        return None
    names = TORCHRUN_VARS if launched == "torchrun" else SLURM_VARS
    rank, world_size = _env_int(names[0]), _env_int(names[1])
    local_rank = _env_int(names[2]) or 0
    assert rank is not None and world_size is not None  # guaranteed by _launcher
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent launch environment: {names[0]}={rank}, {names[1]}={world_size}, "
                         f"{names[2]}={local_rank} (need 0 <= rank < world size)")
    return rank, world_size, local_rank


def _launcher() -> str | None:
    if _env_int("RANK") is not None and _env_int("WORLD_SIZE") is not None:
        return "torchrun"
    ntasks = _env_int("SLURM_NTASKS")
    if _env_int("SLURM_PROCID") is not None and ntasks is not None and ntasks > 1:
        return "slurm"
    return None


def launcher_name() -> str:
    """``'torchrun'``, ``'slurm'`` or ``'none'``: which launcher's variables describe this process."""
    return _launcher() or "none"


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 when not launched distributed).

    Usable before the process group exists, e.g. to attach Sacred observers on rank 0 only.
    """
    env = _launch_env()
    return env[0] if env else 0


def select_device(gpu_id: int | None, local_rank: int | None = None) -> torch.device:
    """The CUDA/ROCm device of ``local_rank`` (distributed) or ``gpu_id``; the CPU without a GPU.

    With one visible GPU per task (``srun --gpus-per-task=1``, ``CUDA_VISIBLE_DEVICES`` or
    ``ROCR_VISIBLE_DEVICES`` set per task), every local rank uses device 0.

    Raises:
        ValueError: the index does not exist among several visible GPUs.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    n_visible = torch.cuda.device_count()
    wanted = local_rank if local_rank is not None else (gpu_id or 0)
    if wanted < n_visible:
        index = wanted
    elif n_visible == 1 and local_rank is not None:
        index = 0                      # the launcher bound one GPU to this task
    else:
        source = "local rank" if local_rank is not None else "gpu_id"
        raise ValueError(f"{source} {wanted} needs GPU {wanted}, but only {n_visible} are visible "
                         "(check CUDA_VISIBLE_DEVICES/ROCR_VISIBLE_DEVICES and the tasks per node)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(gpu_id: int | None = 0, *, force_cpu: bool = False) -> DistInfo:
    """Initialise the process group when launched by torchrun or srun; else one process.

    Args:
        gpu_id: the device of a single-process run (the config key ``gpu_id``).
        force_cpu: compute on the CPU (``gloo``) even when a GPU is visible.

    Returns:
        DistInfo of this process; ``backend`` is None for a single process.

    Raises:
        RuntimeError: a distributed launch without ``MASTER_ADDR``/``MASTER_PORT``.
        ValueError: malformed launcher variables or a missing GPU (see :func:`select_device`).
    """
    env = _launch_env()
    if env is None:
        device = torch.device("cpu") if force_cpu else select_device(gpu_id)
        return DistInfo(0, 1, 0, device, None)
    rank, world_size, local_rank = env
    for var in RENDEZVOUS_VARS:
        if not os.environ.get(var):
            raise RuntimeError(
                f"distributed launch detected ({launcher_name()}: rank {rank} of {world_size}) but {var} "
                "is not set: export MASTER_ADDR (the first node's host name) and MASTER_PORT (a free "
                "port) before srun, as examples/frontier/train.sbatch does; for a single process, "
                "run without srun/torchrun (or unset SLURM_NTASKS)")
    use_gpu = torch.cuda.is_available() and not force_cpu
    device = select_device(None, local_rank) if use_gpu else torch.device("cpu")
    backend = "nccl" if use_gpu else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if use_gpu and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = device   # torch >= 2.3: eager NCCL/RCCL communicator on this GPU
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size, **kwargs)
        log.info("process group: %s, %d ranks, backend %s, rank 0 at %s:%s", launcher_name(), world_size,
                 backend, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
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
    """Sum ``tensor`` over ranks in place (no-op on one process) and return it.

    The tensor must live on the backend's device (``DistInfo.device``: CPU for gloo).
    """
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank_flag(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on any rank (all-reduce MAX).

    A collective: every rank must call it at the same point (e.g. after each step).
    """
    if not is_dist():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device or torch.device("cpu"))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; identity on one process)."""
    if not is_dist():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(model: nn.Module, info: DistInfo, *, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel when ``info.world_size > 1``; else ``model`` itself.

    BatchNorm stays per rank (no SyncBatchNorm): each episode normalises with its own batch, as
    on one GPU. Gradients are averaged over ranks.

    Every trainable parameter must get a gradient each step, or DDP's gradient buckets stall
    ("Expected to have finished reduction"): ALPNet's encoder freezes the DeepLab ASPP head it
    keeps only for its state_dict keys. A model with data-dependent unused parameters needs
    ``find_unused_parameters=True`` (a graph search every step).
    """
    if info.world_size <= 1:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (state_dict keys without ``module.``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
