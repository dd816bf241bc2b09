"""util/backends.py: determinism and cudnn.benchmark per backend, and their restoration.

A CPU can set every one of these global switches (they only take effect in GPU kernels), so
the choices for CUDA and ROCm are checked here with a ``cuda`` device object and the backend
given explicitly."""
from __future__ import annotations

import os

import pytest
import torch

from util.backends import CUBLAS_WORKSPACE, CUDNN_BENCHMARK_ENV, apply_compute_settings, cudnn_benchmark_choice

# CUBLAS_WORKSPACE_CONFIG as each test using ``pristine`` found it (None: unset). Not read at
# import: other imports of the session may set it (importing MONAI does), so the leak check below
# can only see a leak where the variable starts unset, as in ``pytest tests/test_backends.py``
_FOUND: dict[str, str | None] = {}

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.fixture
def pristine(monkeypatch, request):
    """Known switches before, and the caller's restored after, whatever the test does (the
    process environment too: a deterministic GPU run sets ``CUBLAS_WORKSPACE_CONFIG``)."""
    # setenv first: monkeypatch records a variable's earlier state (unset included) only when it
    # changes it, and delenv of an unset variable records nothing to undo
    _FOUND[request.node.name] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark = saved[2]


@pytest.mark.parametrize("device, deterministic, rocm, env, expected", [
    (CUDA, False, False, {}, True),                          # NVIDIA: search once per shape
    (CUDA, False, True, {}, False),                          # ROCm: MIOpen would tune every shape
    (CUDA, False, True, {CUDNN_BENCHMARK_ENV: "1"}, True),   # ... unless asked
    (CUDA, False, False, {CUDNN_BENCHMARK_ENV: "0"}, False),
    (CUDA, True, False, {CUDNN_BENCHMARK_ENV: "1"}, False),  # deterministic wins
    (CPU, False, False, {CUDNN_BENCHMARK_ENV: "1"}, False),
], ids=["cuda", "rocm", "rocm-asked", "cuda-refused", "deterministic", "cpu"])
def test_benchmark_choice(device, deterministic, rocm, env, expected):
    assert cudnn_benchmark_choice(device, deterministic, rocm=rocm, environ=env) is expected


def test_benchmark_variable_must_be_0_or_1():
    with pytest.raises(ValueError, match=f"{CUDNN_BENCHMARK_ENV}='yes'"):
        cudnn_benchmark_choice(CUDA, False, rocm=False, environ={CUDNN_BENCHMARK_ENV: "yes"})


def test_deterministic_on_gpu_warns_instead_of_raising(pristine):
    restore = apply_compute_settings(deterministic=True, device=CUDA, rocm=False, environ={})
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()        # a GPU's step 1 does not raise
    assert torch.backends.cudnn.benchmark is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE  # deterministic cuBLAS asked
    restore()
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


def test_pristine_leaves_the_session_environment_alone():
    """Runs after the GPU test above: the variable is as that test found it (monkeypatch undid it)."""
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == _FOUND["test_deterministic_on_gpu_warns_instead_of_raising"]


def test_deterministic_on_cpu_stays_strict(pristine):
    restore = apply_compute_settings(deterministic=True, device=CPU, environ={})
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    restore()
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("rocm, during", [(False, True), (True, False)], ids=["cuda", "rocm"])
def test_benchmark_set_for_the_run_and_restored_after(pristine, rocm, during):
    torch.backends.cudnn.benchmark = not during              # the caller's own value
    restore = apply_compute_settings(deterministic=False, device=CUDA, rocm=rocm, environ={})
    assert torch.backends.cudnn.benchmark is during
    restore()
    assert torch.backends.cudnn.benchmark is (not during)


def test_training_restores_the_switches(pristine, monkeypatch):
    """util.training.train restores them even when the run fails part-way."""
    from util.training import loop as trainer

    def failing_resume(*args, **kwargs):
        assert torch.are_deterministic_algorithms_enabled()   # set for the run by then
        raise RuntimeError("stop here")

    monkeypatch.setattr(trainer, "resume_path", failing_resume)
    torch.backends.cudnn.benchmark = True
    cfg = {"deterministic": True, "precision": "fp32"}   # what train reads before resume_path
    info = trainer.DistInfo(0, 1, 0, CPU, None)
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.train(cfg, card=None, data_dir=".", train_ids=[], info=info)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark is True
