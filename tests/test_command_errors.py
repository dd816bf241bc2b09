"""Every command of the README answers a mistake with one ``error:`` line and exit status 2
(docs/training.md, 'Mistakes and exit codes'), as training and validation do: the data commands
(an unknown card, a missing folder) and ``segment.py`` with a query that is not a readable 3-D
image (a text file, a 2-D PNG). Run as a user runs them, in subprocesses."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from util.user_errors import EXIT_USER_ERROR

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(args, **kw) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-2000:]
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return errors[0]


@pytest.mark.parametrize("args, names", [
    (["-m", "data.prepare", "--dataset", "NOPE", "--raw", "RAW", "--out", "OUT"],
     "unknown dataset 'NOPE'"),
    (["-m", "data.class_index", "--dataset", "NOPE", "--data-dir", "."], "unknown dataset 'NOPE'"),
    (["-m", "data.pseudolabels", "--dataset", "CHAOST2", "--data-dir", "NOWHERE"], "NOWHERE"),
    (["-m", "data.chaos_mr", "--raw", "NOWHERE", "--out", "OUT"], "NOWHERE"),
], ids=["prepare", "class_index", "pseudolabels", "chaos_mr"])
def test_data_commands(tmp_path, args, names):
    args = [str(tmp_path / a) if a in ("RAW", "OUT", "NOWHERE") else a for a in args]
    assert names.replace("NOWHERE", str(tmp_path / "NOWHERE")) in one_error_line(args)
    assert not (tmp_path / "OUT").exists()


@pytest.fixture(scope="module")
def segment_inputs(tmp_path_factory):
    """A tiny 3-D support scan with its label, a ResNet-18 snapshot, and two bad queries."""
    import torch

    from models.grid_proto_fewshot import FewShotSeg
    from util.checkpoint import save_snapshot

    d = tmp_path_factory.mktemp("seg")
    vol = np.zeros((6, 32, 32), np.float32)
    vol[:, 8:24, 8:24] = 100.0
    lab = (vol > 0).astype(np.uint8)
    for name, arr in (("support.nii.gz", vol), ("support_label.nii.gz", lab)):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(d / name))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.uint8)), str(d / "slice.png"))
    (d / "notes.txt").write_text("not an image\n", encoding="utf-8")
    torch.manual_seed(0)
    model = FewShotSeg(cfg={"which_model": "dlfcn_res18", "init_weights": "random"})
    save_snapshot(d / "5.pth", model=model, step=5,
                  config={"modelname": "dlfcn_res18", "dataset": "CHAOST2_Superpix"})
    return d


@pytest.mark.parametrize("query, says", [("notes.txt", "not a readable image"),
                                         ("slice.png", "a 2-D image")], ids=["text", "2-D png"])
def test_segment_with_a_query_that_is_not_a_3d_image(segment_inputs, tmp_path, query, says):
    d = segment_inputs
    line = one_error_line(["segment.py", "--checkpoint", str(d / "5.pth"), "--support-image",
                           str(d / "support.nii.gz"), "--support-label", str(d / "support_label.nii.gz"),
                           "--label", "1", "--query", str(d / query), "--out", str(tmp_path / "out"),
                           "--modality", "MR", "--device", "cpu"])
    assert f"{d / query}: {says}" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
