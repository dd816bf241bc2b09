"""Dataset converters and the prepare chain on synthetic raw data, checked against the
generator's own truth (where each organ really is), never against the pipeline itself."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from data import chaos_mr, cmr_c0, prepare, synapse_ct
from data.cards import load_card
from data.synthetic import write_synthetic
from dataloaders.scans import load_classmap, load_scan


def _index_to_physical(img: sitk.Image, idx_xyz: np.ndarray) -> np.ndarray:
    d = np.reshape(img.GetDirection(), (3, 3))
    return np.asarray(img.GetOrigin()) + (idx_xyz * np.asarray(img.GetSpacing())) @ d.T


def _physical_to_index(img: sitk.Image, pts: np.ndarray) -> np.ndarray:
    d = np.reshape(img.GetDirection(), (3, 3))
    return ((pts - np.asarray(img.GetOrigin())) @ d) / np.asarray(img.GetSpacing())


def assert_labels_on_truth(label: sitk.Image, truth: sitk.Image, organs, min_dice_like=0.9):
    """Every labelled output voxel lies on its organ in the generator's truth (within one raw
    voxel: the resampling interpolates between neighbours), and the organs are found."""
    lab = sitk.GetArrayFromImage(label)
    tru = sitk.GetArrayFromImage(truth)
    for organ in organs:
        zz, yy, xx = np.nonzero(lab == organ)
        assert len(zz) > 100, f"organ {organ} missing from the output"
        idx = np.rint(_physical_to_index(truth, _index_to_physical(label, np.stack([xx, yy, zz], 1))))
        idx = idx.astype(int)
        inside = np.all((idx >= 0) & (idx < np.asarray(truth.GetSize())), axis=1)
        assert inside.all()
        near = ndimage.binary_dilation(tru == organ, np.ones((3, 3, 3), bool))
        on_organ = near[idx[:, 2], idx[:, 1], idx[:, 0]]
        assert on_organ.all(), f"organ {organ}: {np.mean(~on_organ):.1%} of its voxels off the truth"
        # and the volumes agree (nothing lost): output volume vs truth volume in mm^3
        vol_out = len(zz) * np.prod(label.GetSpacing())
        vol_true = (tru == organ).sum() * np.prod(truth.GetSpacing())
        assert vol_out == pytest.approx(vol_true, rel=1 - min_dice_like)


@pytest.mark.parametrize("numbering", ["ascending", "descending"])
def test_chaos_labels_lie_on_their_organs(tmp_path, numbering):
    cases = write_synthetic("chaos", tmp_path / "raw", 1, seed=11, numbering=numbering, size=256)
    summary = chaos_mr.convert(tmp_path / "raw", tmp_path / "out", progress=False)
    assert (summary.written, summary.skipped) == (1, 0)
    image = sitk.ReadImage(str(tmp_path / "out" / "image_1.nii.gz"))
    label = sitk.ReadImage(str(tmp_path / "out" / "label_1.nii.gz"))
    assert image.GetSize()[:2] == (256, 256) and label.GetSize() == image.GetSize()
    assert image.GetSpacing() == pytest.approx((1.25, 1.25, 7.7), abs=1e-4)
    # published array orientation: rows flipped against the DICOM rows, slices ascending in z
    d = np.reshape(image.GetDirection(), (3, 3))
    assert d[1, 1] < -0.95 and d[0, 0] > 0.95 and d[2, 2] > 0.95
    assert_labels_on_truth(label, cases[0].truth, (1, 2, 3, 4))
    record = json.loads((tmp_path / "out" / "record_1.json").read_text(encoding="utf-8"))
    assert record["raw"]["size"] == list(cases[0].truth.GetSize())
    # a rerun skips the finished case
    again = chaos_mr.convert(tmp_path / "raw", tmp_path / "out", progress=False)
    assert (again.written, again.skipped) == (0, 1)


def test_synapse_reindexed_and_aligned(tmp_path):
    cases = write_synthetic("synapse", tmp_path / "raw", 0, seed=2, ids=[3, 7], size=320)
    assert synapse_ct.main(["--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                            "--no-progress"]) == 0
    # img0003 -> 0, img0007 -> 1 (sorted order)
    record = json.loads((tmp_path / "out" / "record_1.json").read_text(encoding="utf-8"))
    assert record["source"]["image"].endswith("img0007.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "out" / "image_1.nii.gz"))
    arr = sitk.GetArrayFromImage(image)
    assert arr.min() == pytest.approx(0.0) and arr.max() == pytest.approx(255.0, abs=1e-3)
    label = sitk.ReadImage(str(tmp_path / "out" / "label_1.nii.gz"))
    assert label.GetSize()[2] == cases[1].truth.GetSize()[2] + 1      # SPEC §8: Z + 1
    assert_labels_on_truth(label, cases[1].truth, (1, 2, 3, 6), min_dice_like=0.85)


def test_c0_label_order_and_geometry(tmp_path):
    cases = write_synthetic("c0", tmp_path / "raw", 2, seed=5)
    cmr_c0.convert(tmp_path / "raw", tmp_path / "out", progress=False)
    for case in cases:
        label = sitk.ReadImage(str(tmp_path / "out" / f"label_{case.case_id}.nii.gz"))
        image = sitk.ReadImage(str(tmp_path / "out" / f"image_{case.case_id}.nii.gz"))
        assert image.GetSize()[:2] == (256, 256)
        assert image.GetSize()[2] == case.truth.GetSize()[2]         # short-axis slices kept
        arr = sitk.GetArrayFromImage(image)
        assert 0 <= arr.min() and arr.max() <= 255.0 + 1e-3
        # LV-BP (1) is the bright blood pool, LV-MYO (2) the dark wall: the order of the card
        lab = sitk.GetArrayFromImage(label)
        assert arr[lab == 1].mean() > 2 * arr[lab == 2].mean()
        assert_labels_on_truth(label, case.truth, (1, 2, 3), min_dice_like=0.85)
    card = load_card("C0")
    assert card.labels == ("BG", "LV-BP", "LV-MYO", "RV")


def test_prepare_chain_and_loaders(tmp_path):
    write_synthetic("chaos", tmp_path / "raw", 2, seed=1, size=256, numbering="alternate")
    out = tmp_path / "out"
    assert prepare.main(["--dataset", "CHAOST2", "--raw", str(tmp_path / "raw"), "--out", str(out),
                         "--jobs", "1", "--no-progress"]) == 0
    card = load_card("CHAOST2")
    scan = load_scan(card, out, 2, label=True, superpix_scale="MIDDLE", fgmask=True)
    assert scan.superpix.max() > 5 and scan.fgmask.any()
    assert not scan.superpix[scan.fgmask == 0].any()              # superpixels only in the body
    classmap = load_classmap(card, out, 1)
    lab = scan.label
    assert classmap["LIVER"]["2"] == [z for z in range(lab.shape[2]) if (lab[..., z] == 1).any()]
    assert load_classmap(card, out, 100)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    summary = prepare.prepare("CHAOST2", tmp_path / "raw", out, jobs=1, progress=False)
    assert (summary.converted, summary.skipped, summary.index_files, summary.pseudolabelled) == (0, 2, 0, 0)
