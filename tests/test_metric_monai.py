"""util/metric.py against MONAI, the field's standard library (docs/validation.md, 'Surface
metrics'): Dice, HD95 and ASSD on synthetic cases (both masks empty, one empty, one voxel,
touching the border, anisotropic spacing, random blobs) and, with the real CHAOS scans, on the
predictions a real validation run saved. The one documented difference: exactly one mask
empty gives HD95 inf here and NaN in MONAI."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from util.metric import assd, confusion_counts, dice_from_counts, hd95

monai_metrics = pytest.importorskip("monai.metrics")

SHAPE = (6, 10, 12)                   # Z x H x W
REL = 1e-6                            # MONAI computes in float32 where this module uses float64


def ours(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float]:
    dice = float(dice_from_counts(confusion_counts(pred.astype(np.uint8), gt.astype(np.uint8), [1]))[0])
    return {"dice": dice, "hd95": hd95(pred, gt, spacing), "assd": assd(pred, gt, spacing)}


def monai(pred: np.ndarray, gt: np.ndarray, spacing) -> dict[str, float]:
    """MONAI's values for one binary mask pair (batch 1, one foreground channel)."""
    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    g = torch.from_numpy(gt.astype(np.float32))[None, None]
    sp = list(map(float, spacing))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # MONAI warns about empty masks
        return {"dice": monai_metrics.compute_dice(p, g, include_background=True).item(),
                "hd95": monai_metrics.compute_hausdorff_distance(
                    p, g, include_background=True, percentile=95, spacing=sp).item(),
                "assd": monai_metrics.compute_average_surface_distance(
                    p, g, include_background=True, symmetric=True, spacing=sp).item()}


def box(z0, z1, y0, y1, x0, x1, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[z0:z1, y0:y1, x0:x1] = True
    return m


def blob(seed: int, shape=SHAPE) -> np.ndarray:
    """A random smooth blob: thresholded smoothed noise (several components, holes)."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 1.2) > 0.1


EMPTY = np.zeros(SHAPE, bool)
CUBE = box(1, 4, 2, 6, 3, 8)
ISO, ANISO = (1.0, 1.0, 1.0), (7.7, 1.25, 0.9)
CASES = {
    # one voxel each, (3, 4, 5) vs (3, 4, 8): 3 voxels apart along x
    "one voxel": (box(3, 4, 4, 5, 5, 6), box(3, 4, 4, 5, 8, 9), ANISO),
    "touching the border": (box(0, 6, 0, 5, 0, 12), box(0, 4, 2, 10, 0, 9), ISO),
    "anisotropic shifted cube": (CUBE, np.roll(CUBE, 1, axis=0), ANISO),
    "anisotropic blobs": (blob(1), blob(2), ANISO),
    "isotropic blobs": (blob(3), blob(4), ISO),
    "identical": (CUBE, CUBE, ANISO),
}


@pytest.mark.parametrize("name", list(CASES))
def test_equal_to_monai(name):
    pred, gt, spacing = CASES[name]
    a, b = ours(pred, gt, spacing), monai(pred, gt, spacing)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=REL, abs=1e-6), (name, key, a[key], b[key])


def test_one_voxel_by_hand():
    """Two single voxels 3 apart along x at 0.9 mm: every distance is 2.7 mm; Dice 0."""
    pred, gt, spacing = CASES["one voxel"]
    got = ours(pred, gt, spacing)
    assert got["hd95"] == pytest.approx(3 * 0.9) and got["assd"] == pytest.approx(3 * 0.9)
    assert got["dice"] == 0.0


def test_shifted_cube_by_hand():
    """A cube shifted by one slice at 7.7 mm: the Hausdorff distance is 7.7 (the top and bottom
    faces); Dice 2 * 2 / (3 + 3) slices of overlap = 2/3."""
    pred, gt, spacing = CASES["anisotropic shifted cube"]
    got = ours(pred, gt, spacing)
    assert got["dice"] == pytest.approx(2 / 3)
    assert hd95(pred, gt, spacing, percentile=100) == pytest.approx(7.7)


def test_both_empty_is_nan_in_both():
    a, b = ours(EMPTY, EMPTY, ISO), monai(EMPTY, EMPTY, ISO)
    assert all(math.isnan(a[k]) and math.isnan(b[k]) for k in a)


@pytest.mark.parametrize("empty", ["prediction", "truth"])
def test_one_mask_empty_hd95_inf_here_nan_in_monai(empty):
    pred, gt = (EMPTY, CUBE) if empty == "prediction" else (CUBE, EMPTY)
    a, b = ours(pred, gt, ISO), monai(pred, gt, ISO)
    assert a["hd95"] == math.inf and math.isnan(b["hd95"])          # the documented difference
    assert a["assd"] == math.inf and b["assd"] == math.inf
    assert a["dice"] == 0.0
    # MONAI's default ignore_empty=True makes an empty truth NaN; with it off, 0 as here
    assert math.isnan(b["dice"]) if empty == "truth" else b["dice"] == 0.0


# ---- the predictions of a real validation run --------------------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from tests.realdata import chaos_dir, chaos_skip_reason
    data_dir = chaos_dir()
    if data_dir is None:
        pytest.skip(chaos_skip_reason())
    from tests.refnet import REFERENCE, fixture_state_dict
    from validation import ex

    tmp = tmp_path_factory.mktemp("real")
    weights = tmp / "fixture_tuned.pth"
    torch.save(fixture_state_dict(tuned_localconv=True), weights)
    cfg = dict(json.loads((REFERENCE / "validation" / "chaos_fold0_kidneys.json").read_text(
        encoding="utf-8"))["config"])
    cfg.update(use_coco_init=False, num_workers=0, reload_model_path=str(weights), write_figures=False,
               tensorboard=False, path={"log_dir": str(tmp / "runs"), "CHAOST2": {"data_dir": str(data_dir)},
                                        "CHAOST2_Superpix": {"data_dir": str(data_dir)}})
    run = ex.run("validation_main", config_updates=cfg)
    return Path(run.observers[0].dir), data_dir


@pytest.mark.realdata
def test_real_predictions_equal_to_monai(real_run):
    """Every saved prediction of fold 0 (kidneys): Dice, HD95 and ASSD of the run's metrics.json
    equal MONAI's on the same file, the same label and the counted slices."""
    import SimpleITK as sitk

    run_dir, data_dir = real_run
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    raw = {k: np.array(metrics[f"mar_val_batches_raw{n}"]["values"][-1], dtype=float)
           for k, n in (("dice", "Dice"), ("hd95", "HD95"), ("assd", "ASSD"))}
    queries, labels = (1, 2, 3, 5), (2, 3)                 # support 8 (the 1-shot fold-0 list)
    compared = 0
    for qi, sid in enumerate(queries):
        gt_img = sitk.ReadImage(str(data_dir / f"label_{sid}.nii.gz"))
        spacing = tuple(reversed(gt_img.GetSpacing()))     # z, y, x
        for ci, c in enumerate(labels):
            gt = sitk.GetArrayFromImage(gt_img) == c
            pred = sitk.GetArrayFromImage(sitk.ReadImage(
                str(run_dir / "interm_preds" / f"scan_{sid}_label_{c}.nii.gz"))) == c
            zs = np.flatnonzero(gt.any(axis=(1, 2)))           # counted slices (z_margin 0)
            keep = np.zeros(gt.shape[0], bool)
            keep[zs[0]:zs[-1] + 1] = True
            ref = monai(pred & keep[:, None, None], gt, spacing)
            assert raw["dice"][qi, ci] == pytest.approx(ref["dice"], rel=1e-6)
            assert raw["hd95"][qi, ci] == pytest.approx(ref["hd95"], rel=1e-6)
            assert raw["assd"][qi, ci] == pytest.approx(ref["assd"], rel=1e-6)
            compared += 1
    assert compared == len(queries) * len(labels)
