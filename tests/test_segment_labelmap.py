"""segment.py with several organs (docs/segment.md, 'Several organs'): each organ's own files and,
with --label-map, one label map per query holding every organ, overlaps kept by the organ
listed first."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from util.segment.labelmap import label_map_name, merge_masks

SPACING = (1.25, 1.25, 7.7)          # x, y, z mm: CHAOST2's training grid


def write(arr_zyx: np.ndarray, path: Path, spacing=SPACING) -> Path:
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return path


def test_merge_keeps_the_first_listed_organ_where_masks_overlap(tmp_path):
    """Organ 2 on columns 0..3, organ 3 on columns 2..5 of a 2 x 3 x 6 grid: columns 2 and 3
    overlap (2 x 3 x 2 = 12 voxels) and stay 2; columns 4, 5 are 3."""
    a = np.zeros((2, 3, 6), np.uint8)
    b = np.zeros((2, 3, 6), np.uint8)
    a[..., 0:4] = 2
    b[..., 2:6] = 3
    path, overlap = merge_masks([(2, write(a, tmp_path / "a.nii.gz")), (3, write(b, tmp_path / "b.nii.gz"))],
                                tmp_path / "map.nii.gz")
    merged = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert overlap == 2 * 3 * 2
    assert (merged[..., 0:4] == 2).all() and (merged[..., 4:6] == 3).all()
    assert sitk.ReadImage(str(path)).GetSpacing() == pytest.approx(SPACING)
    _, overlap = merge_masks([(3, tmp_path / "b.nii.gz"), (2, tmp_path / "a.nii.gz")], tmp_path / "m2.nii.gz")
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "m2.nii.gz")))[..., 2:4] == 3).all()
    write(np.zeros((2, 3, 5), np.uint8), tmp_path / "c.nii.gz")
    with pytest.raises(ValueError, match="different grids"):
        merge_masks([(2, tmp_path / "a.nii.gz"), (4, tmp_path / "c.nii.gz")], tmp_path / "m3.nii.gz")


@pytest.mark.slow
def test_segment_py_two_organs_and_one_label_map(tmp_path):
    import torch

    import segment as cli
    from models.grid_proto_fewshot import FewShotSeg
    from util.checkpoint import save_snapshot

    vol = np.full((6, 64, 64), 10.0, np.float32)
    lab = np.zeros(vol.shape, np.uint8)
    lab[:, 8:30, 8:30], lab[:, 36:56, 36:56] = 1, 4            # liver, spleen (CHAOST2 labels)
    vol[lab == 1], vol[lab == 4] = 200.0, 120.0
    support = write(vol, tmp_path / "support.nii.gz")
    label = write(lab, tmp_path / "support_label.nii.gz")
    torch.manual_seed(0)
    save_snapshot(tmp_path / "5.pth", model=FewShotSeg(cfg={"which_model": "dlfcn_res18", "init_weights": "random"}),
                  step=5, config={"modelname": "dlfcn_res18", "dataset": "CHAOST2_Superpix"})
    out = tmp_path / "out"
    rc = cli.main(["--checkpoint", str(tmp_path / "5.pth"), "--dataset", "CHAOST2", "--preprocessed",
                   "--support-image", str(support), "--support-label", str(label), "--label", "1", "4",
                   "--label-map", "--query", str(support), "--out", str(out), "--device", "cpu",
                   "--no-progress", "--overlay-slices", "0", "--rule", "max"])
    assert rc == 0
    organs = {c: sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"support_label{c}.nii.gz"))) for c in (1, 4)}
    assert (out / "volumes_label1.csv").is_file() and (out / "volumes_label4.csv").is_file()
    merged = sitk.GetArrayFromImage(sitk.ReadImage(str(out / label_map_name(support))))
    assert set(np.unique(merged).tolist()) <= {0, 1, 4} and all(m.any() for m in organs.values())
    assert ((merged == 1) == (organs[1] > 0)).all()              # liver listed first: all of it
    assert ((merged == 4) == ((organs[4] > 0) & (organs[1] == 0))).all()
