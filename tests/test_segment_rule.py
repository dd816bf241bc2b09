"""util.segment pieces by hand: the label-free rule, z-ranges between grids, checkpoint
recognition, the CSV and mask names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from util.segment.checkpoint_info import inspect_checkpoint, modelname_from_state
from util.segment.inputs import mask_name, query_stem
from util.segment.rule import (combine_max, estimated_extent, label_free_mask, largest_component,
                               masks_by_part)
from util.segment.volumes import Prepared, range_to_training


def _per_part(n_z: int = 10, size: int = 6) -> np.ndarray:
    """3 parts x n_z x size x size: part p predicts a 2 x 2 square at (p, p) on slices 2..7,
    and part 0 also a lone voxel on slice 9 (a small separate component)."""
    pp = np.zeros((3, n_z, size, size), np.uint8)
    for p in range(3):
        pp[p, 2:8, p:p + 2, p:p + 2] = 1
    pp[0, 9, 5, 5] = 1
    return pp


def test_combine_max_is_union_of_parts():
    pp = _per_part()
    m = combine_max(pp)
    assert m.dtype == np.uint8
    # slice 4: squares at (0,0), (1,1), (2,2) of side 2 -> union 4 + 3 + 3 = 10 voxels
    assert int(m[4].sum()) == 10
    assert int(m[9].sum()) == 1 and int(m[0].sum()) == 0


def test_largest_component_and_extent():
    pp = _per_part()
    comp = largest_component(combine_max(pp))
    assert int(comp[9].sum()) == 0                      # the lone voxel is dropped
    assert int(comp.sum()) == 6 * 10
    assert estimated_extent(pp) == (2, 7)
    assert estimated_extent(np.zeros_like(pp)) is None
    assert int(largest_component(np.zeros((2, 3, 3), np.uint8)).sum()) == 0


def test_masks_by_part_follows_the_protocol_assignment():
    pp = _per_part()
    # extent 2..7, width 5/3: z 2,3 -> part 0; 4,5 -> part 1 (2 // 1.67 = 1, 3 // 1.67 = 1);
    # 6 -> 4 // 1.67 = 2; 7 -> 5 // 1.67 = 3 -> clipped to 2
    m = masks_by_part(pp, 2, 7)
    for z, part in ((2, 0), (3, 0), (4, 1), (5, 1), (6, 2), (7, 2)):
        np.testing.assert_array_equal(m[z], pp[part, z], err_msg=f"slice {z}")
    assert int(m[:2].sum()) == 0 and int(m[8:].sum()) == 0  # outside: background


def test_label_free_mask_rules():
    pp = _per_part()
    m, ext = label_free_mask(pp, "extent")
    assert ext == (2, 7)
    np.testing.assert_array_equal(m, masks_by_part(pp, 2, 7))
    m, ext = label_free_mask(pp, "max")
    assert ext is None and int(m[9].sum()) == 1
    m, ext = label_free_mask(np.zeros_like(pp), "extent")
    assert ext is None and not m.any()
    with pytest.raises(ValueError, match="rule='nope'"):
        label_free_mask(pp, "nope")


def _grid(size, spacing, origin, direction) -> dict:
    return {"size": list(size), "spacing": list(spacing), "origin": list(origin),
            "direction": list(np.asarray(direction, float).ravel())}


def _prepared(record) -> Prepared:
    n_z = 11 if record is None else int(record["output"]["size"][2])
    return Prepared("q", np.zeros((4, 4, n_z)), None, record)


def test_range_to_training_by_hand():
    out = _grid((10, 10, 11), (1, 1, 6), (0, 0, 0), np.eye(3))
    # raw z spacing 3 from 0: slices 4 and 13 lie at 12 and 39 mm -> 2 and 6.5 -> nearest 2, 7
    raw = _grid((10, 10, 20), (1, 1, 3), (0, 0, 0), np.eye(3))
    assert range_to_training(_prepared({"raw": raw, "output": out}), (4, 13)) == (2, 7)
    # z flipped: raw slice k at 57 - 3k mm: 4 -> 45 mm (7.5 -> 8), 13 -> 18 mm (3)
    flipped = _grid((10, 10, 20), (1, 1, 3), (0, 0, 57), np.diag([1, 1, -1]))
    assert range_to_training(_prepared({"raw": flipped, "output": out}), (4, 13)) == (3, 8)
    # beyond the training grid: clipped
    assert range_to_training(_prepared({"raw": raw, "output": out}), (0, 19)) == (0, 10)
    # --preprocessed: the same grid
    assert range_to_training(_prepared(None), (3, 5)) == (3, 5)
    # slices along x (sagittal array order): refused
    sagittal = _grid((20, 10, 10), (3, 1, 1), (0, 0, 0), np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="not the axial axis"):
        range_to_training(_prepared({"raw": sagittal, "output": out}), (1, 2))


def test_names():
    assert query_stem("/a/b/case_1.nii.gz") == "case_1"
    assert query_stem("x.mha") == "x" and query_stem("y.NII") == "y"
    assert mask_name("/a/scan.v2.nii.gz", 3) == "scan.v2_label3.nii.gz"


def test_modelname_from_reference_keys():
    from tests.refnet import reference_keys

    keys = {k: torch.zeros(1) for k in reference_keys()}
    assert modelname_from_state(keys, "ref.pth") == "dlfcn_res101"
    with pytest.raises(ValueError, match="not an ALPNet checkpoint"):
        modelname_from_state({"fc.weight": torch.zeros(1)}, "other.pth")
    cut = {k: v for k, v in keys.items() if ".layer3." not in k or int(k.split(".")[3]) < 4}
    with pytest.raises(ValueError, match="4 blocks in encoder.backbone.layer3"):
        modelname_from_state(cut, "odd.pth")


def test_inspect_checkpoint_reads_snapshot_config(tmp_path):
    from tests.refnet import reference_keys

    state = {k: torch.zeros(1) for k in reference_keys()}
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    info = inspect_checkpoint(bare)
    assert (info.modelname, info.npart, info.val_wsize, info.dataset, info.norm_stats) == \
        ("dlfcn_res101", 3, 2, None, None)
    snap = tmp_path / "snap.pth"
    torch.save({"model": state, "step": 7, "config": {
        "modelname": "dlfcn_res101", "n_sup_part": 5, "val_wsize": 3, "dataset": "SABS_Superpix",
        "norm_stats": {"mean": 1.5, "std": 2.0},
        "model": {"which_model": "dlfcn_res101", "proto_grid_size": 4, "unknown_key": 1}}}, snap)
    info = inspect_checkpoint(snap)
    assert (info.npart, info.val_wsize, info.dataset, info.step) == (5, 3, "SABS_Superpix", 7)
    assert (info.norm_stats.mean, info.norm_stats.std) == (1.5, 2.0)
    assert info.model_cfg == {"which_model": "dlfcn_res101", "proto_grid_size": 4}
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": state, "config": {"modelname": "dlfcn_res18"}}, wrong)
    with pytest.raises(ValueError, match="names modelname='dlfcn_res18' but the weights"):
        inspect_checkpoint(wrong)
