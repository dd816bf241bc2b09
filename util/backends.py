"""Determinism and convolution-algorithm settings of a training run, per backend, restored after.

What is exact where (docs/scale-out.md, 'What is exact where'):

- CPU: ``deterministic=True`` makes PyTorch refuse nondeterministic kernels (strict); training
  is then bit-identical across runs and across an interruption and its resume.
- GPU (CUDA, ROCm): some kernels ALPNet needs have no deterministic version (the weighted NLL
  loss forward, bilinear-interpolation backward), so ``deterministic=True`` only *warns* for them
  (``torch.use_deterministic_algorithms(True, warn_only=True)``) instead of failing the first
  step; everything else runs deterministically (cuDNN/MIOpen algorithms, cuBLAS with a fixed
  workspace). Runs then agree to float rounding, not bit for bit.
- ``cudnn.benchmark`` (searching the fastest convolution algorithm per input shape): on for CUDA,
  where the search takes seconds and the input shape is fixed; off on ROCm, where MIOpen's search
  tunes every convolution shape for minutes (its results are kept in MIOpen's database, which
  the Frontier job scripts keep across requeues); off when deterministic. The environment
  variable ``SSL_ALPNET_CUDNN_BENCHMARK=1``/``0`` overrides the choice.

The previous global settings are restored by the callable :func:`apply_compute_settings`
returns, so a run inside a longer process (tests, notebooks) leaves nothing behind.

Precision and compilation (docs/training.md, 'Speed on the CPU'): :func:`autocast` is the one
bf16 autocast of training, validation and segment; :func:`cpu_native_bf16` tells whether this
CPU computes bf16 natively (AVX512-BF16 or AMX), where ``precision=bf16`` pays;
:func:`compile_problem` says why ``torch.compile`` cannot run here, if it cannot.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, ContextManager, Mapping

import torch

__all__ = ["CUDNN_BENCHMARK_ENV", "CUBLAS_WORKSPACE", "PRECISIONS", "is_rocm", "cudnn_benchmark_choice",
           "apply_compute_settings", "set_cublas_workspace", "autocast", "cpu_native_bf16",
           "precision_note", "compile_problem"]

log = logging.getLogger(__name__)

CUDNN_BENCHMARK_ENV = "SSL_ALPNET_CUDNN_BENCHMARK"   # "1" / "0": override the per-backend choice
CUBLAS_WORKSPACE = ":4096:8"   # deterministic cuBLAS (PyTorch reproducibility notes)
PRECISIONS = ("fp32", "bf16")  # the config key ``precision``: float32, or bf16 autocast
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")   # /proc/cpuinfo flags of native bf16 arithmetic
CPP_COMPILERS = ("g++", "c++", "clang++")         # what torch.compile's CPU backend builds with


def is_rocm() -> bool:
    """True for PyTorch's ROCm (HIP) build, where ``torch.cuda`` runs AMD GPUs through MIOpen."""
    return getattr(torch.version, "hip", None) is not None


def cudnn_benchmark_choice(device: torch.device, deterministic: bool, *, rocm: bool | None = None,
                           environ: Mapping[str, str] | None = None) -> bool:
    """Whether to set ``torch.backends.cudnn.benchmark`` for a run on ``device``.

    Off on the CPU and when ``deterministic``; else ``SSL_ALPNET_CUDNN_BENCHMARK`` ('1'/'0') if
    set, else on for CUDA and off for ROCm (``rocm``: None asks this torch build).

    Raises:
        ValueError: the environment variable is neither '0' nor '1'.
    """
    if device.type != "cuda" or deterministic:
        return False
    env = os.environ if environ is None else environ
    value = (env.get(CUDNN_BENCHMARK_ENV) or "").strip()
    if value:
        if value not in ("0", "1"):
            raise ValueError(f"{CUDNN_BENCHMARK_ENV}={value!r}: expected 1 (search convolution "
                             "algorithms) or 0 (do not)")
        return value == "1"
    return not (is_rocm() if rocm is None else rocm)


def apply_compute_settings(*, deterministic: bool, device: torch.device,
                           rocm: bool | None = None,
                           environ: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Set determinism and ``cudnn.benchmark`` for a run on ``device``; return their restorer.

    On a GPU, ``deterministic=True`` warns (once per operation) where PyTorch has no
    deterministic kernel instead of raising; on the CPU it stays strict.
    """
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    gpu = device.type == "cuda"
    torch.use_deterministic_algorithms(deterministic, warn_only=deterministic and gpu)
    benchmark = cudnn_benchmark_choice(device, deterministic, rocm=rocm, environ=environ)
    if gpu:
        torch.backends.cudnn.benchmark = benchmark
        if deterministic:
            set_cublas_workspace()
            log.warning("deterministic=True on a GPU: operations without a deterministic kernel "
                        "warn and run anyway; results agree to float rounding, not bit for bit "
                        "(bit-identical resume: CPU)")
    log.info("deterministic=%s (%s), cudnn.benchmark=%s (%s)", deterministic,
             "warn only" if deterministic and gpu else "strict" if deterministic else "off",
             torch.backends.cudnn.benchmark, "ROCm" if gpu and (is_rocm() if rocm is None else rocm)
             else device.type)

    def restore() -> None:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]

    return restore


def set_cublas_workspace() -> None:
    """``CUBLAS_WORKSPACE_CONFIG`` for deterministic cuBLAS, unless already set. cuBLAS reads it
    when its first handle is created: call this before any CUDA work (the entry points and the
    GPU benchmark do), or it has no effect in that process."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bf16 autocast on ``device`` for ``precision='bf16'``, nothing for ``'fp32'``.

    Raises:
        ValueError: another precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {list(PRECISIONS)}")
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has native bf16 arithmetic (oneDNN's own test where torch has it, else
    the AVX512-BF16 / AMX flags of ``/proc/cpuinfo``, or of the ``cpuinfo`` text given)."""
    if cpuinfo is None:
        probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
        if probe is not None:
            try:
                return bool(probe())
            except RuntimeError:                 # a build without oneDNN
                pass
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def precision_note(device: torch.device, precision: str) -> str:
    """One log line on the precision of a run on ``device`` and whether bf16 would pay."""
    if device.type != "cpu":
        return f"precision={precision} on {device.type}"
    if cpu_native_bf16():
        tip = "" if precision == "bf16" else " (precision=bf16 trains about 2x faster here)"
        return f"precision={precision}; this CPU has native bf16{tip}"
    return (f"precision={precision}; this CPU has no native bf16 (bf16 would be emulated and slower: "
            "keep fp32)")


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` of the encoder cannot run here, or None when it can."""
    if not hasattr(torch, "compile") or not hasattr(torch.nn.Module, "compile"):
        return f"torch {torch.__version__} has no Module.compile (torch 2.2 or newer needed)"
    if device.type == "cpu" and not any(shutil.which(c) for c in CPP_COMPILERS):
        return ("torch.compile on the CPU builds C++ kernels, and no C++ compiler "
                f"({', '.join(CPP_COMPILERS)}) is on PATH: install one (e.g. apt-get install g++)")
    return None
