"""Predictions back in the raw scan's geometry (issue 4): a synthetic raw scan (anisotropic,
row-flipped direction, not 256 x 256) is preprocessed with its record; its own preprocessed
label, used as the prediction, must come back onto the raw grid and overlay the raw label."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from data.cards import load_card
from dataloaders.scans import load_scan
from dataloaders.validation_set import ValidationSet
from util.validation import SnapshotResult, write_predictions

RAW_SIZE_XYZ = (180, 150, 9)
RAW_SPACING = (1.6, 1.6, 6.0)
ORGANS = {2: (slice(2, 7), slice(40, 80), slice(30, 60)),     # z, y, x boxes on the raw grid
          3: (slice(3, 8), slice(60, 110), slice(100, 140))}


def raw_scan() -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(0)
    img = 100 + 10 * rng.random(RAW_SIZE_XYZ[::-1])
    lab = np.zeros(RAW_SIZE_XYZ[::-1], np.uint8)
    for c, box in ORGANS.items():
        lab[box] = c
        img[box] = 300 + 50 * c
    out = []
    for arr in (img.astype(np.float32), lab):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(RAW_SPACING)
        im.SetOrigin((-120.0, 80.0, 10.0))
        im.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
        out.append(im)
    return out[0], out[1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_prediction_restored_to_raw_geometry(tmp_path: Path):
    card = load_card("CHAOST2")
    raw_img, raw_lab = raw_scan()
    from data.preprocess import preprocess_scan

    img, lab, record = preprocess_scan(raw_img, raw_lab, card)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    sitk.WriteImage(img, str(data_dir / "image_1.nii.gz"))
    sitk.WriteImage(lab, str(data_dir / "label_1.nii.gz"))
    (data_dir / "record_1.json").write_text(json.dumps(record), encoding="utf-8")
    scan = load_scan(card, data_dir, 1, label=True)
    labels = [2, 3]
    preds = {(1, c): np.moveaxis(scan.label == c, -1, 0).astype(np.uint8) for c in labels}
    res = SnapshotResult(None, tmp_path, labels, [1], np.zeros((1, 2, 3), np.int64),
                         np.ones((1, 2), bool), *(np.zeros((1, 2)),) * 5, preds, {})
    vset = ValidationSet(card, data_dir, 0, [1, 2], [2], [1], labels, [], [scan])
    out = tmp_path / "run"
    write_predictions(res, vset, out)

    raw_truth = sitk.GetArrayFromImage(raw_lab)
    for c in labels:
        pre = sitk.ReadImage(str(out / "interm_preds" / f"scan_1_label_{c}.nii.gz"))
        assert pre.GetSize() == img.GetSize() and pre.GetOrigin() == pytest.approx(img.GetOrigin())
        back = sitk.ReadImage(str(out / "interm_preds_raw" / f"scan_1_label_{c}.nii.gz"))
        assert back.GetSize() == raw_img.GetSize()
        assert back.GetSpacing() == pytest.approx(RAW_SPACING)
        assert back.GetOrigin() == pytest.approx(raw_img.GetOrigin())
        assert back.GetDirection() == pytest.approx(raw_img.GetDirection())
        arr = sitk.GetArrayFromImage(back)
        assert set(np.unique(arr)) <= {0, c}
        # resampled there and back (7.7 mm slices from 6 mm ones): the box still overlays
        assert dice(arr == c, raw_truth == c) > 0.8
