"""``python -m util.env`` (docs/training.md, 'Your environment') and the torch / torchvision
build mismatch: named in one line with the fix by the report and by every entry script, which
exit 2 instead of printing the traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data.cards import known_cards
from tests.tinydata import build_tiny_dataset
from util.builds import build_of
from util.user_errors import EXIT_USER_ERROR

ROOT = Path(__file__).resolve().parents[1]
NMS_ERROR = "operator torchvision::nms does not exist"


@pytest.mark.parametrize("version, cuda, hip, want", [
    ("2.5.1+cpu", None, None, "CPU"), ("2.5.1+cu121", None, None, "CUDA 12.1"),
    ("0.20.1+cu118", None, None, "CUDA 11.8"), ("2.5.1+rocm6.2", None, None, "ROCm 6.2"),
    ("2.5.1", "12.4", None, "CUDA 12.4"), ("2.5.1", None, "6.2.4", "ROCm 6.2.4"),
    ("2.5.1", None, None, "default PyPI build"), (None, None, None, "not installed")])
def test_build_named_from_the_version(version, cuda, hip, want):
    assert build_of(version, cuda=cuda, hip=hip) == want


def run(args, *, cwd=ROOT, extra_path=None, timeout=300):
    paths = [str(p) for p in (extra_path, ROOT) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_report_names_versions_devices_threads_and_every_cards_data(tmp_path):
    """Run where the CHAOST2 card's default data folder (relative to the working directory)
    holds a tiny prepared set of 20 scans: the report counts them; other cards' folders are
    absent."""
    build_tiny_dataset(tmp_path / "data" / "CHAOST2" / "chaos_MR_T2_normalized", "CHAOST2", hw=16,
                       depth=2, block=8)
    proc = run(["-m", "util.env", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    import torch
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["threads"] >= 1 and report["problems"] == []
    cards = {d["card"]: d for d in report["datasets"]}
    assert set(cards) == set(known_cards())
    assert (cards["CHAOST2"]["scans"], cards["CHAOST2"]["superpixels_MIDDLE"]) == (20, 20)
    assert cards["SABS"]["exists"] is False
    text = run(["-m", "util.env"], cwd=tmp_path).stdout
    assert "dataset      CHAOST2: data/CHAOST2/chaos_MR_T2_normalized (20 prepared scans" in text
    assert text.splitlines()[0].startswith("python       ")


@pytest.fixture(scope="module")
def broken_torchvision(tmp_path_factory):
    """A torchvision package that fails to import as a CPU torch with a CUDA torchvision does."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "torchvision").mkdir()
    (root / "torchvision" / "__init__.py").write_text(f"raise RuntimeError({NMS_ERROR!r})\n",
                                                      encoding="utf-8")
    return root


def test_the_report_names_the_mismatch_in_one_line(broken_torchvision):
    proc = run(["-m", "util.env"], extra_path=broken_torchvision)
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and NMS_ERROR in errors[0] and "from the same index" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("script, args", [
    ("training.py", ["with", "n_steps=1"]), ("validation.py", ["with", "reload_model_path=x.pth"]),
    ("segment.py", ["--help"])], ids=["training", "validation", "segment"])
def test_entry_scripts_print_the_same_line_instead_of_the_traceback(broken_torchvision, script, args):
    report = run(["-m", "util.env"], extra_path=broken_torchvision).stdout
    (line,) = [x for x in report.splitlines() if x.startswith("error: ")]
    proc = run([script, *args], extra_path=broken_torchvision)
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr.strip().splitlines() == [line] and proc.stdout == ""
