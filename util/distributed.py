"""Distributed helpers on ``torch.distributed``; every helper degrades to one process.

A distributed launch is detected from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` or from
the variables ``srun`` sets for each task of a job step: ``SLURM_STEP_ID`` (a real step, not the
batch script's own step), ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID``. The
batch script itself also carries ``SLURM_PROCID=0`` and, with ``sbatch -n``, ``SLURM_NTASKS``:
a bare ``python3 training.py`` there is one process, not rank 0 of N. Otherwise the run is a
single process. The rendezvous is ``MASTER_ADDR`` with ``MASTER_PORT``, or, under srun without
``MASTER_PORT``, a port derived from ``SLURM_JOB_ID`` (:func:`rendezvous_port`; the sbatch
scripts export the same one). Each rank uses the GPU of its local rank (``SLURM_LOCALID`` or
``LOCAL_RANK``, not ``rank % device_count``), or device 0 when the launcher made one GPU visible
per task (``srun --gpus-per-task=1``); without a GPU, the CPU with ``gloo``.

The launcher owns the environment: nothing here writes ``os.environ``.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "init_distributed", "launch_rank", "launcher_name", "select_device", "is_dist",
           "get_rank", "get_world_size", "is_main_process", "barrier", "all_reduce_sum", "broadcast_object",
           "wrap_ddp", "cleanup", "rendezvous_port", "srun_step_id", "PORT_BASE", "PORT_SPAN"]

log = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM_VARS = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID")
SLURM_STEP_VARS = ("SLURM_STEP_ID", "SLURM_STEPID")   # srun sets both (the second: old name)
# Slurm's reserved step ids (slurm.h): pending 0xfffffffd, extern 0xfffffffc, batch script
# 0xfffffffb, interactive 0xfffffffa, and NO_VAL 0xfffffffe (the batch step of old releases).
# Real srun steps count up from 0; every id from here on names one of those special steps.
SLURM_FIRST_RESERVED_STEP = 0xFFFFFFF0
# MASTER_PORT when srun starts the ranks without one: PORT_BASE + SLURM_JOB_ID % PORT_SPAN, a
# port per job (below the Linux ephemeral range 32768-60999), the same one the sbatch scripts export
PORT_BASE = 20000
PORT_SPAN = 10000


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
    """(rank, world_size, local_rank) from torchrun or srun variables, or None (one process).

    torchrun wins when both are present (``srun torchrun`` sets both; torchrun's are the ones that
    describe this process). A Slurm step of one task is a single process.

    Raises:
        ValueError: a variable is not an integer, or the rank is outside ``[0, world_size)``.
    """
    launched = _launcher()
    if launched is None:
        return None
    names = TORCHRUN_VARS if launched == "torchrun" else (SLURM_VARS[0], _slurm_size_var(), SLURM_VARS[2])
    rank, world_size = _env_int(names[0]), _env_int(names[1])
    local_rank = _env_int(names[2]) or 0
    assert rank is not None and world_size is not None  # guaranteed by _launcher
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent launch environment: {names[0]}={rank}, {names[1]}={world_size}, "
                         f"{names[2]}={local_rank} (need 0 <= rank < world size)")
    return rank, world_size, local_rank


def srun_step_id(environ: Mapping[str, str] | None = None) -> int | None:
    """The id of the srun job step this process is a task of; None outside one.

    None for a process of the batch script (``SLURM_STEP_ID`` unset, or one of Slurm's reserved
    ids such as the batch step's 4294967291 / 4294967294, or a name such as ``batch``), of the
    interactive or extern step, and outside Slurm.
    """
    env = os.environ if environ is None else environ
    for var in SLURM_STEP_VARS:
        value = (env.get(var) or "").strip()
        if value:
            if not value.isdigit():
                return None                     # "batch", "extern", "interactive"
            step = int(value)
            return step if step < SLURM_FIRST_RESERVED_STEP else None
    return None


def _slurm_size_var() -> str:
    """``SLURM_STEP_NUM_TASKS`` (this step's tasks); ``SLURM_NTASKS`` where a launcher lacks it."""
    return SLURM_VARS[1] if _env_int(SLURM_VARS[1]) is not None else "SLURM_NTASKS"


def _launcher() -> str | None:
    if _env_int("RANK") is not None and _env_int("WORLD_SIZE") is not None:
        return "torchrun"
    if srun_step_id() is None:
        return None                             # the batch script, salloc's shell, no Slurm
    ntasks = _env_int(_slurm_size_var())
    if _env_int("SLURM_PROCID") is not None and ntasks is not None and ntasks > 1:
        return "slurm"
    return None


def rendezvous_port(environ: Mapping[str, str] | None = None) -> int | None:
    """``MASTER_PORT``; else, inside a Slurm job, ``PORT_BASE + SLURM_JOB_ID % PORT_SPAN``.

    Two jobs sharing a node then use different ports (unless their ids differ by a multiple of
    ``PORT_SPAN``). None when neither is set.

    Raises:
        ValueError: ``MASTER_PORT`` or ``SLURM_JOB_ID`` is not an integer.
    """
    env = os.environ if environ is None else environ
    for var in ("MASTER_PORT", "SLURM_JOB_ID"):
        value = (env.get(var) or "").strip()
        if not value:
            continue
        if not value.isdigit():
            raise ValueError(f"environment variable {var}={value!r} is not an integer")
        return int(value) if var == "MASTER_PORT" else PORT_BASE + int(value) % PORT_SPAN
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
    launcher = launcher_name()
    addr = os.environ.get("MASTER_ADDR")
    port = rendezvous_port() if launcher == "slurm" else _env_int("MASTER_PORT")
    for var, value in (("MASTER_ADDR", addr), ("MASTER_PORT", port)):
        if not value:
            raise RuntimeError(
                f"distributed launch detected ({launcher}: rank {rank} of {world_size}) but {var} "
                "is not set: export MASTER_ADDR (the first node's host name) and MASTER_PORT (a free "
                "port; under srun, SLURM_JOB_ID gives one) before srun, as "
                "examples/frontier/train.sbatch does; for a single process, run without srun/torchrun")
    use_gpu = torch.cuda.is_available() and not force_cpu
    device = select_device(None, local_rank) if use_gpu else torch.device("cpu")
    backend = "nccl" if use_gpu else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if use_gpu and "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = device   # torch >= 2.3: eager NCCL/RCCL communicator on this GPU
        # torchrun's agent may host the store at MASTER_PORT already: env:// knows; a port derived
        # here is passed explicitly (nothing here writes os.environ)
        host = f"[{addr}]" if ":" in str(addr) else addr
        init = "env://" if os.environ.get("MASTER_PORT") else f"tcp://{host}:{port}"
        dist.init_process_group(backend=backend, init_method=init, rank=rank,
                                world_size=world_size, **kwargs)
        log.info("process group: %s, %d ranks, backend %s, rank 0 at %s:%s", launcher, world_size,
                 backend, addr, port)
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


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
