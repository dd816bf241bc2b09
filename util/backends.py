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
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Mapping

import torch

__all__ = ["CUDNN_BENCHMARK_ENV", "CUBLAS_WORKSPACE", "is_rocm", "cudnn_benchmark_choice",
           "apply_compute_settings"]

log = logging.getLogger(__name__)

CUDNN_BENCHMARK_ENV = "SSL_ALPNET_CUDNN_BENCHMARK"   # "1" / "0": override the per-backend choice
CUBLAS_WORKSPACE = ":4096:8"   # deterministic cuBLAS (PyTorch reproducibility notes)


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
            # cuBLAS needs a fixed workspace for deterministic results (read at its first use)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
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
