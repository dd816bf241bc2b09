"""Precision and compilation (util/backends.py, the ``precision`` and ``compile`` keys): the one
autocast, native-bf16 detection, the log line that recommends bf16, and ``compile=True`` refused
in one line where it cannot run, and working where it can (snapshot keys unchanged, resumable)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from util import backends

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_autocast_bf16_fp32_and_refused():
    a = torch.randn(4, 4)
    with backends.autocast(CPU, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with backends.autocast(CPU, "fp32"):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="precision='fp16'"):
        backends.autocast(CPU, "fp16")


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu sse2 avx2 amx_bf16 amx_tile", True),
    ("fpu sse2 avx2 avx512f avx512bw", False),        # AVX-512 without its bf16 extension
    ("", False),
], ids=["avx512_bf16", "amx", "avx512-no-bf16", "no-flags"])
def test_native_bf16_from_cpu_flags(flags, native):
    text = f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert backends.cpu_native_bf16(text) is native


def test_precision_note_recommends_bf16_only_where_it_pays(monkeypatch):
    monkeypatch.setattr(backends, "cpu_native_bf16", lambda: True)
    assert "2x faster" in backends.precision_note(CPU, "fp32")
    assert "2x faster" not in backends.precision_note(CPU, "bf16")
    assert "native bf16" in backends.precision_note(CPU, "bf16")
    monkeypatch.setattr(backends, "cpu_native_bf16", lambda: False)
    assert "keep fp32" in backends.precision_note(CPU, "fp32")


def test_compile_problem_names_the_missing_compiler(monkeypatch):
    monkeypatch.setattr(backends.shutil, "which", lambda name: None)
    problem = backends.compile_problem(CPU)
    assert problem and "g++" in problem and "apt-get install g++" in problem
    monkeypatch.setattr(backends.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert backends.compile_problem(CPU) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tinydata import build_tiny_dataset

    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "chaos", "CHAOST2", hw=64, depth=2,
                              block=16)


def base_args(tiny, log_dir: Path) -> list[str]:
    return ["modelname=dlfcn_res18", "init_weights=random", "num_workers=0", "exclude_cls_list=[]",
            "n_steps=2", "save_snapshot_every=2", "input_size=[64,64]", f"path.log_dir={log_dir}",
            f"path.CHAOST2_Superpix.data_dir={tiny.data_dir}"]


def test_compile_without_a_compiler_is_one_error_line(tiny, tmp_path):
    """No C++ compiler on PATH: ``training.py with compile=True`` stops in the pre-flight, exit 2,
    one line naming the fix, no run directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = str(bindir)                 # nothing on PATH: no g++, no c++, no clang++
    proc = subprocess.run([sys.executable, "training.py", "with", *base_args(tiny, tmp_path / "runs"),
                           "compile=True"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "compile=True" in errors[0] and "C++ compiler" in errors[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_compiled_training_keeps_snapshot_keys_and_resumes(tiny, tmp_path):
    """compile=True trains (the encoder compiled in place), its snapshot has exactly the keys of
    an uncompiled network, its losses are those of the eager run to float rounding, and an eager
    run resumes from it."""
    import training  # noqa: F401  (registers the command 'main')
    from config_ssl_upload import ex
    from models.builder import build_model
    from util.checkpoint import read_snapshot

    if backends.compile_problem(CPU):
        pytest.skip(backends.compile_problem(CPU))
    from sacred.arg_parser import get_config_updates

    updates, _ = get_config_updates(base_args(tiny, tmp_path / "runs"))
    eager = ex.run("main", config_updates={**updates, "exp_prefix": "eager"})
    compiled = ex.run("main", config_updates={**updates, "exp_prefix": "compiled", "compile": True})
    assert compiled.status == "COMPLETED" and compiled.result["step"] == 2
    snap = read_snapshot(compiled.result["snapshot"])
    plain = build_model(compiled.config["model"], pretrained=False).state_dict()
    assert sorted(snap["model"]) == sorted(plain)
    assert not any("_orig_mod" in k for k in snap["model"])
    e_step1 = read_snapshot(eager.result["snapshot"])["model"]
    for key, value in snap["model"].items():      # 2 steps apart by float rounding only
        torch.testing.assert_close(value.float(), e_step1[key].float(), rtol=1e-3, atol=1e-4)
    resumed = ex.run("main", config_updates={**updates, "exp_prefix": "compiled", "n_steps": 3,
                                             "resume_from": compiled.result["snapshot"]})
    assert resumed.status == "COMPLETED" and resumed.result["step"] == 3
