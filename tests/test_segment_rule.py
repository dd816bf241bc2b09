"""util.segment pieces by hand: the label-free rules (every expected mask written out, never
built by the function under test), the support rule's calibration, z-ranges between grids,
checkpoint recognition, the CSV and mask names."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from util.segment.calibrate import (
    SupportEvidence,
    best_run,
    pixel_threshold,
    share_threshold,
    slice_scores,
    support_evidence,
)
from util.segment.checkpoint_info import inspect_checkpoint, modelname_from_state
from util.segment.inputs import mask_name, query_stem
from util.segment.rule import combine_max, estimated_extent, label_free_mask, largest_component, masks_by_part
from util.segment.volumes import Prepared, range_to_training


def _per_part(n_z: int = 10, size: int = 6) -> np.ndarray:
    """3 parts x n_z x size x size margins: part p predicts (+1) a 2 x 2 square at (p, p) on
    slices 2..7 and nothing (-1) elsewhere; part 0 also a lone voxel on slice 9."""
    pp = -np.ones((3, n_z, size, size), np.float32)
    for p in range(3):
        pp[p, 2:8, p:p + 2, p:p + 2] = 1.0
    pp[0, 9, 5, 5] = 1.0
    return pp


def _square(corner: int, size: int = 6) -> np.ndarray:
    """A size x size uint8 slice holding one 2 x 2 square at (corner, corner)."""
    out = np.zeros((size, size), np.uint8)
    out[corner:corner + 2, corner:corner + 2] = 1
    return out


def test_combine_max_is_union_of_parts():
    pp = _per_part()
    m = combine_max(pp)
    assert m.dtype == np.uint8
    expected4 = np.array([[1, 1, 0, 0, 0, 0],          # squares at (0,0), (1,1), (2,2) of side 2
                          [1, 1, 1, 0, 0, 0],
                          [0, 1, 1, 1, 0, 0],
                          [0, 0, 1, 1, 0, 0],
                          [0, 0, 0, 0, 0, 0],
                          [0, 0, 0, 0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(m[4], expected4)
    assert int(m[9].sum()) == 1 and m[9, 5, 5] == 1 and int(m[0].sum()) == 0


def test_largest_component_and_extent():
    pp = _per_part()
    comp = largest_component(combine_max(pp))
    assert int(comp[9].sum()) == 0                      # the lone voxel is dropped
    assert int(comp.sum()) == 6 * 10
    assert estimated_extent(pp) == (2, 7)
    assert estimated_extent(-np.ones_like(pp)) is None
    assert int(largest_component(np.zeros((2, 3, 3), np.uint8)).sum()) == 0


# extent 2..7, width 5/3: z 2,3 -> part 0; 4,5 -> part 1 (2 // 1.67 = 1, 3 // 1.67 = 1);
# 6 -> 4 // 1.67 = 2; 7 -> 5 // 1.67 = 3 -> clipped to 2
PARTS_2_7 = {2: 0, 3: 0, 4: 1, 5: 1, 6: 2, 7: 2}


def test_masks_by_part_follows_the_protocol_assignment():
    m = masks_by_part(_per_part(), 2, 7)
    assert m.dtype == np.uint8
    for z, part in PARTS_2_7.items():
        np.testing.assert_array_equal(m[z], _square(part), err_msg=f"slice {z}")
    assert int(m[:2].sum()) == 0 and int(m[8:].sum()) == 0  # outside: background


def test_label_free_mask_extent_and_max():
    pp = _per_part()
    res = label_free_mask(pp, "extent")
    assert res.extent == (2, 7) and res.found and "2-7" in res.how
    for z in range(10):
        expected = _square(PARTS_2_7[z]) if z in PARTS_2_7 else np.zeros((6, 6), np.uint8)
        np.testing.assert_array_equal(res.mask[z], expected, err_msg=f"slice {z}")
    res = label_free_mask(pp, "max")
    assert res.extent is None and int(res.mask[9].sum()) == 1 and int(res.mask.sum()) == 6 * 10 + 1
    res = label_free_mask(-np.ones_like(pp), "extent")
    assert res.extent is None and not res.found and not res.mask.any()
    with pytest.raises(ValueError, match="rule='nope'"):
        label_free_mask(pp, "nope")
    with pytest.raises(ValueError, match="needs the support's calibration"):
        label_free_mask(pp, "support")


# ------------------------------------------------------------------ the support rule, by hand

def _scored(peaks: list[float], npart: int = 3, size: int = 4) -> np.ndarray:
    """npart x Z x size x size margins whose slice score (largest margin over pixels and parts)
    is ``peaks[z]``: part z % npart holds the peak at pixel (1, 1), every other value is -5."""
    m = np.full((npart, len(peaks), size, size), -5.0, np.float32)
    for z, v in enumerate(peaks):
        m[z % npart, z, 1, 1] = v
    return m


def test_slice_scores_are_the_best_margin():
    m = _scored([0.5, 3.0, -1.0, 2.0])
    np.testing.assert_array_equal(slice_scores(m), [0.5, 3.0, -1.0, 2.0])
    with pytest.raises(ValueError, match="npart x Z x H x W"):
        slice_scores(m[0])


def test_support_threshold_separates_its_own_slices():
    # organ on slices 2..5; scores 1, 2 outside, 4..7 inside: every threshold in (2, 4] separates
    # perfectly, the first midpoint reaching balanced accuracy 1 is (2 + 4) / 2 = 3
    peaks = [1.0, 2.0, 4.0, 6.0, 7.0, 5.0, 2.0, 1.0]
    truth = np.zeros((8, 4, 4), bool)
    truth[2:6, 0, 0] = True
    ev = support_evidence(_scored(peaks), truth)
    assert ev.threshold == pytest.approx(3.0) and ev.accuracy == pytest.approx(1.0)
    assert (ev.organ_slices, ev.n_slices) == (4, 8)
    # overlapping scores: an organ slice at 1.5 below background slices at 2.0; midpoints of
    # the levels 1, 1.5, 2, 5, 6, 7: t = 1.25 -> TPR 4/4, TNR 2/4 (0.75); t = 1.75 -> TPR 3/4,
    # TNR 2/4 (0.625); t = 3.5 -> TPR 3/4, TNR 4/4 (0.875, the best); t = 5.5 -> 2/4, 4/4
    peaks = [1.0, 2.0, 1.5, 6.0, 7.0, 5.0, 2.0, 1.0]
    ev = support_evidence(_scored(peaks), truth)
    assert ev.threshold == pytest.approx(3.5) and ev.accuracy == pytest.approx(0.875)
    with pytest.raises(ValueError, match="no organ voxel"):
        support_evidence(_scored(peaks), np.zeros_like(truth))
    with pytest.raises(ValueError, match="cover 8 slices, its mask 7"):
        support_evidence(_scored(peaks), truth[:7])


@pytest.mark.parametrize("gain, expected", [
    ([-1, -1, 2, 3, -1, 4, -1, -1], (2, 5)),      # 2 + 3 - 1 + 4 = 8 > 5 (2..3) or 4 (5..5)
    ([-1, 2, -5, -1, 1, 1, 1, -1], (4, 6)),       # 3 beats 2: a deep gap splits the runs
    ([-1, -2, -0.5], None),                       # nothing positive: no run
    ([0.0, 0.0], None),
    ([3.0], (0, 0)),
], ids=["bridges-a-dip", "deep-gap-splits", "all-negative", "all-zero", "one-slice"])
def test_best_run_by_hand(gain, expected):
    assert best_run(np.array(gain, float)) == expected


def test_support_rule_finds_the_organ_slices_and_nothing_else():
    # the support's share of organ slices (4 of 12) puts the query's own threshold midway between
    # its 4th (4) and 5th (2.5) highest scores, 3.25: the support's 3.0 is the lower, it is used
    ev = SupportEvidence(threshold=3.0, accuracy=1.0, organ_slices=4, n_slices=12)
    # organ slices 3..6 (scores 5, 6, 2.5, 5: a dip bridged), a lone spike at slice 9
    peaks = [1, 1, 2, 5, 6, 2.5, 5, 1, 1, 4, 1, 1]
    m = _scored([float(v) for v in peaks])
    res = label_free_mask(m, "support", ev)
    assert res.extent == (3, 6) and res.found
    assert "slices 3-6" in res.how and "3.00" in res.how and "6.00" in res.how
    # inside 3..6 a pixel is organ where any part's margin exceeds the pixel threshold (0 here):
    # the peak pixel (1, 1) on slices 3, 4, 5, 6 (margins 5, 6, 2.5, 5); the spike on 9 is outside
    expected = np.zeros((12, 4, 4), np.uint8)
    expected[3:7, 1, 1] = 1
    np.testing.assert_array_equal(res.mask, expected)
    # a pixel threshold of 4: slice 5's peak (2.5) is dropped, which splits the kept pixels into
    # two 3-D components, slices 3..4 (2 voxels) and slice 6 (1 voxel): the larger one is kept
    strict = SupportEvidence(threshold=3.0, accuracy=1.0, organ_slices=4, n_slices=12,
                             pixel_threshold=4.0)
    res = label_free_mask(m, "support", strict)
    expected[5:7, 1, 1] = 0
    assert res.extent == (3, 4) and "above 4.000" in res.how
    np.testing.assert_array_equal(res.mask, expected)


def test_support_rule_lower_query_margins_use_the_support_voxel_share():
    # the query of the test above (192 voxels: peaks 5, 6, 2.5, 5 on slices 3..6 and the spike 4
    # on 9, 1..2 elsewhere, all other voxels -5). The support's pixel threshold 5.5 keeps only
    # slice 4's peak; its organ share 4/192 puts the query's own threshold at the quantile
    # 1 - 4/192 of its margins: position 191 x 188/192 = 187.02 of the sorted values, between
    # 2.5 (187th) and 4 (188th): 2.5 + 0.0208 x 1.5 = 2.531 < 5.5 -> slices 3, 4, 6 keep a voxel,
    # of which the largest 3-D component, slices 3..4, is kept (slice 6 is cut off by slice 5)
    peaks = [1, 1, 2, 5, 6, 2.5, 5, 1, 1, 4, 1, 1]
    m = _scored([float(v) for v in peaks])
    only_support = SupportEvidence(threshold=3.0, accuracy=1.0, organ_slices=4, n_slices=12,
                                   pixel_threshold=5.5)
    res = label_free_mask(m, "support", only_support)
    assert res.extent == (4, 4) and int(res.mask.sum()) == 1 and res.mask[4, 1, 1] == 1
    shared = SupportEvidence(threshold=3.0, accuracy=1.0, organ_slices=4, n_slices=12,
                             pixel_threshold=5.5, voxel_share=4 / 192)
    res = label_free_mask(m, "support", shared)
    expected = np.zeros((12, 4, 4), np.uint8)
    expected[[3, 4], 1, 1] = 1
    assert res.extent == (3, 4) and "above 2.531" in res.how
    np.testing.assert_array_equal(res.mask, expected)


def test_support_rule_keeps_the_largest_3d_component():
    # organ: a 2 x 2 block at rows/cols 0..1 on slices 2..4 (12 voxels, margin 6); inside the run
    # two responses above the pixel threshold 0 that do not touch it through a face: pixel (3, 3)
    # on slices 2..3 (2 voxels) and pixel (2, 2) on slice 3, diagonal to the block's (1, 1) (a
    # 26- but not a 6-neighbour). Only the block is kept; the run is 2..4.
    m = np.full((2, 6, 4, 4), -5.0, np.float32)
    m[0, 2:5, 0:2, 0:2] = 6.0
    m[1, 2:4, 3, 3] = 4.0
    m[1, 3, 2, 2] = 4.0
    ev = SupportEvidence(threshold=3.0, accuracy=1.0, organ_slices=3, n_slices=6)
    res = label_free_mask(m, "support", ev)
    expected = np.zeros((6, 4, 4), np.uint8)
    expected[2:5, 0:2, 0:2] = 1
    assert res.extent == (2, 4)
    np.testing.assert_array_equal(res.mask, expected)
    # the kept component's slices are the extent: the block on slice 2 only (4 voxels) loses to
    # a 5-voxel response on slices 3..4 (pixel (3, 3) on both, (3, 2), (2, 3), (2, 2) on slice 3);
    # the run is still 2..4, the extent 3..4
    m = np.full((2, 6, 4, 4), -5.0, np.float32)
    m[0, 2, 0:2, 0:2] = 6.0
    m[1, 3:5, 3, 3] = 4.0
    m[1, 3, [3, 2, 2], [2, 3, 2]] = 4.0
    res = label_free_mask(m, "support", ev)
    expected[:] = 0
    expected[3:5, 3, 3] = 1
    expected[3, [3, 2, 2], [2, 3, 2]] = 1
    assert res.extent == (3, 4) and "slices 3-4" in res.how
    np.testing.assert_array_equal(res.mask, expected)


def test_share_threshold_by_hand():
    scores = np.array([1.0, 5.0, 3.0, 4.0])                   # ranked 5, 4, 3, 1
    assert share_threshold(scores, 0.5) == pytest.approx(3.5)   # k = 2: (4 + 3) / 2
    assert share_threshold(scores, 0.0) == pytest.approx(4.5)   # k at least 1: (5 + 4) / 2
    assert share_threshold(scores, 1.0) == pytest.approx(0.0)   # k = Z: below all, 1 - 1


def test_support_rule_lower_query_scores_use_the_support_share():
    # the support's slices scored up to its threshold 5.5 (they match its own support slices);
    # the query's organ slices 2..4 score 5.8, 5.0, 4.8, the rest 1..2. Share 3 of 10 -> k = 3:
    # midway between the 3rd (4.8) and 4th (2.0) highest, 3.4 < 5.5 -> the run 2..4
    ev = SupportEvidence(threshold=5.5, accuracy=1.0, organ_slices=3, n_slices=10)
    peaks = [1.0, 2.0, 5.8, 5.0, 4.8, 2.0, 1.0, 1.5, 1.0, 1.0]
    res = label_free_mask(_scored(peaks), "support", ev)
    assert res.extent == (2, 4) and "above 3.40" in res.how
    expected = np.zeros((10, 4, 4), np.uint8)
    expected[2:5, 1, 1] = 1
    np.testing.assert_array_equal(res.mask, expected)
    # no slice reaches the support's 5.5: not found, whatever the share would allow
    res = label_free_mask(_scored([1.0, 5.4, 5.3, 1.0]), "support", ev)
    assert res.extent is None and not res.found and "5.50" in res.how
    # ... unless a slice reaches the support's weakest organ slice (5.0): share 3/10 of 4 -> k = 1,
    # midway between 5.4 and 5.3 = 5.35 -> the run is slice 1 alone
    weak = SupportEvidence(threshold=5.5, accuracy=1.0, organ_slices=3, n_slices=10,
                           weakest_organ=5.0)
    res = label_free_mask(_scored([1.0, 5.4, 5.3, 1.0]), "support", weak)
    assert res.extent == (1, 1) and res.found


def test_pixel_threshold_by_hand():
    """Organ pixel (0, 0) on slices 2..5 with margin 3; a blob pixel (3, 3) with margin 1 on all 8
    slices. Part slices of the organ list [2, 3, 4, 5] for 3 parts: int(4/6)=0 -> 2, int(4/2)=2 ->
    4, int(4*5/6)=3 -> 5, left out; kept: slice 3 (organ) and 0, 1, 6, 7.
    t < 1: blob on 5 kept slices + 1 organ pixel, Dice 2*1 / (6 + 1) = 0.286; 1 <= t < 3: Dice 1
    (the first grid value, 1.0, is taken: ``margin > t`` drops the blob's 1.0); t >= 3: 0."""
    m = np.full((3, 8, 4, 4), -2.0, np.float32)
    m[:, :, 3, 3] = 1.0
    m[1, 2:6, 0, 0] = 3.0
    truth = np.zeros((8, 4, 4), bool)
    truth[2:6, 0, 0] = True
    t, d = pixel_threshold(m, truth)
    assert t == pytest.approx(1.0) and d == pytest.approx(1.0)
    # without the blob the network's own decision (t = 0) is already perfect: 0 is kept
    m[:, :, 3, 3] = -2.0
    assert pixel_threshold(m, truth) == (0.0, pytest.approx(1.0))
    ev = support_evidence(m, truth)
    assert ev.pixel_threshold == 0.0 and ev.pixel_dice == pytest.approx(1.0)
    assert ev.voxel_share == pytest.approx(4 / (8 * 16))      # 4 organ voxels of 8 x 4 x 4


def test_support_rule_without_organ_is_empty():
    ev = SupportEvidence(threshold=3.0, accuracy=1.0, organ_slices=4, n_slices=8)
    m = _scored([1.0, 2.9, 2.0, 1.5, 2.5])              # nothing reaches the support's threshold
    m[:, :, 2:, 2:] = 0.5                               # a blob the network paints everywhere
    res = label_free_mask(m, "support", ev)
    assert res.extent is None and not res.found and not res.mask.any()
    assert res.mask.shape == (5, 4, 4) and res.mask.dtype == np.uint8
    assert "not found" in res.how and "2.90" in res.how


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
