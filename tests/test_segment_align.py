"""util.segment.align by hand: slice summaries, the warping path, the mapped extent, the
part-assigned mask and its calibrated threshold, and the ``align`` rule end to end (every
expected value written out, never built by the function under test)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import requires_real_data
from util.segment.align import (
    align_evidence,
    align_mask,
    assigned_mask,
    assigned_threshold,
    map_extent,
    slice_descriptors,
    warp_path,
)
from util.segment.rule import label_free_mask, masks_by_part

# extent 2..7 in 3 parts (as in tests/test_segment_rule.py): z 2,3 -> 0; 4,5 -> 1; 6,7 -> 2
PARTS_2_7 = {2: 0, 3: 0, 4: 1, 5: 1, 6: 2, 7: 2}


def test_slice_descriptors_block_means_unit_rows():
    vol = np.zeros((2, 4, 4))
    vol[0] = [[2, 4, 0, 0],        # blocks: top-left mean 3, top-right 0,
              [2, 4, 0, 0],        #         bottom-left 0, bottom-right (4+4+5+3)/4 = 4
              [0, 0, 4, 4],
              [0, 0, 5, 3]]
    d = slice_descriptors(vol, grid=2)
    assert d.shape == (2, 4) and d.dtype == np.float64
    np.testing.assert_allclose(d[0], [0.6, 0.0, 0.0, 0.8])   # (3, 0, 0, 4) / 5
    np.testing.assert_array_equal(d[1], [0.0, 0.0, 0.0, 0.0])  # a zero slice stays zero
    big = np.full((2, 5, 5), 100.0)                           # 5 x 5: the top-left 4 x 4 is used
    big[:, :4, :4] = vol
    np.testing.assert_allclose(slice_descriptors(big, grid=2)[0], [0.6, 0.0, 0.0, 0.8])
    np.testing.assert_array_equal(slice_descriptors(big, grid=2)[1], [0.0, 0.0, 0.0, 0.0])


def test_slice_descriptors_bad_shapes():
    with pytest.raises(ValueError, match="Z x H x W"):
        slice_descriptors(np.zeros((4, 4)), grid=2)
    with pytest.raises(ValueError, match="H, W >= 2"):
        slice_descriptors(np.zeros((2, 1, 4)), grid=2)
    with pytest.raises(ValueError, match="H, W >= 8"):
        slice_descriptors(np.zeros((2, 4, 4)))                # the default grid is 8


def test_warp_path_diagonal_and_hand_case():
    assert warp_path(1.0 - np.eye(3)) == [(0, 0), (1, 1), (2, 2)]
    cost = np.array([[0.0, 5.0],
                     [1.0, 5.0],
                     [5.0, 1.0],
                     [5.0, 0.0]])
    # (0,0) (1,0) (2,1) (3,1): 0 + 1 + 1 + 0 = 2; next best (0,0) (1,0) (2,0) (3,1) or
    # (0,0) (1,1) (2,1) (3,1): 6 each; (0,0) (1,0) (1,1) (2,1) (3,1): 7
    path = warp_path(cost)
    assert path == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert sum(cost[i, j] for i, j in path) == 2.0


def test_warp_path_monotone_from_corner_to_corner():
    cost = np.random.default_rng(0).random((5, 7))
    path = warp_path(cost)
    assert path[0] == (0, 0) and path[-1] == (4, 6)
    steps = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(path, path[1:])}
    assert steps <= {(1, 1), (1, 0), (0, 1)}
    with pytest.raises(ValueError, match="non-empty"):
        warp_path(np.zeros((0, 3)))


def test_map_extent_follows_a_shift():
    # guards warp_path: an identity pairing (query i with support i) would give (2, 5)
    order = [3, 0, 6, 1, 7, 2, 5, 4]
    support = np.eye(9)[order]                  # 8 slices, distinct unit patterns e_3, e_0, ...
    query = np.vstack([np.eye(9)[[8, 8, 8]], support])   # 3 extra slices (e_8) prepended
    # path: query 0..3 with support 0 (cost 1, 1, 1, 0), then query 3 + j with support j (0)
    assert map_extent(query, support, 2, 5) == (5, 8)
    assert map_extent(query, support, 7, 7) == (10, 10)
    assert map_extent(support, support, 2, 5) == (2, 5)


def _margins(n_z=10, size=6, organ=1.0, peak=None):
    """3 parts x n_z x size x size: part p is ``organ`` on a 2 x 2 square at (p, p) on slices
    2..7 (``peak`` at its pixel (p, p) when given), -1 elsewhere."""
    m = -np.ones((3, n_z, size, size))
    for p in range(3):
        m[p, 2:8, p:p + 2, p:p + 2] = organ
        if peak is not None:
            m[p, 2:8, p, p] = peak
    return m


def test_assigned_mask_by_part_and_threshold():
    m = _margins(peak=2.0)
    at0 = assigned_mask(m, 2, 7)
    assert at0.dtype == np.uint8
    np.testing.assert_array_equal(at0, masks_by_part(m, 2, 7))
    high = assigned_mask(m, 2, 7, threshold=1.5)              # between the margins 1 and 2
    for z in range(10):
        sq, px = np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8)
        if z in PARTS_2_7:
            p = PARTS_2_7[z]
            sq[p:p + 2, p:p + 2] = 1
            px[p, p] = 1
        np.testing.assert_array_equal(at0[z], sq, err_msg=f"slice {z}")
        np.testing.assert_array_equal(high[z], px, err_msg=f"slice {z}")


def _support_case():
    """Organ: 2 x 2 square (1..2, 1..2) on slices 2..7 (margin 2.0); the ring around it (rows and
    columns 0..3) margin 0.5 on those slices; background -1. Part slices: 3, 5, 7
    (zlist 2..7 at int(6/6), int(6/2), int(6 * 5/6))."""
    truth = np.zeros((10, 6, 6), bool)
    truth[2:8, 1:3, 1:3] = True
    m = -np.ones((3, 10, 6, 6))
    m[:, 2:8, 0:4, 0:4] = 0.5
    m[:, 2:8, 1:3, 1:3] = 2.0
    return m, truth


def test_assigned_threshold_lands_between_blob_and_organ():
    m, truth = _support_case()
    # t < 0.5 keeps the ring (12 pixels a slice); 0.5 <= t < 2 keeps the organ alone
    assert assigned_threshold(m, truth) == (0.5, 1.0)


def test_assigned_threshold_leaves_the_part_slices_out():
    m, truth = _support_case()
    # part slice 3 disagrees: organ -1, ring 3.0
    m[:, 3, 0:4, 0:4] = np.where(truth[3, 0:4, 0:4], -1.0, 3.0)
    assert assigned_threshold(m, truth) == (0.5, 1.0)
    m, truth = _support_case()      # the same on slice 4 (not a part slice) counts:
    m[:, 4, 0:4, 0:4] = np.where(truth[4, 0:4, 0:4], -1.0, 3.0)
    # kept slices 0,1,2,4,6,8,9; truth 3 x 4 = 12. t = 0.5: organ on 2, 6 (8) + ring on 4 (12):
    # Dice 2*8 / (20 + 12) = 0.5; t = 0: 2*8 / (16 + 16 + 12 + 12) = 16/56; t >= 2: 0
    assert assigned_threshold(m, truth) == (0.5, 0.5)


BLOCKS = [10, 3, 27, 40, 5, 50, 33, 18]   # support slice k bright in 2 x 2 block BLOCKS[k]


def _image(blocks):
    """len(blocks) x 16 x 16: slice k is 1 on the 2 x 2 pixels of 8 x 8 grid block blocks[k]."""
    img = np.zeros((len(blocks), 16, 16))
    for k, b in enumerate(blocks):
        img[k, 2 * (b // 8):2 * (b // 8) + 2, 2 * (b % 8):2 * (b % 8) + 2] = 1.0
    return img


def _organ_margins(n_z, slices, value):
    """3 parts x n_z x 16 x 16: ``value`` on rows/columns 4..7 of ``slices``, -1 elsewhere."""
    m = -np.ones((3, n_z, 16, 16))
    m[:, slices, 4:8, 4:8] = value
    return m


def _evidence():
    truth = np.zeros((8, 16, 16), bool)
    truth[2:6, 4:8, 4:8] = True                 # support organ on slices 2..5
    return align_evidence(_organ_margins(8, slice(2, 6), 2.0), truth, _image(BLOCKS))


def test_align_evidence_by_hand():
    ev = _evidence()
    assert (ev.first, ev.last) == (2, 5)
    assert (ev.pixel_threshold, ev.pixel_dice) == (0.0, 1.0)
    assert ev.scores.threshold == 0.5 and ev.scores.weakest_organ == 2.0   # scores -1 and 2
    assert ev.descriptors.shape == (8, 64) and ev.descriptors[1, 3] == 1.0


def test_align_maps_the_shifted_organ():
    # guards warp_path too: identity pairing maps support 2..5 to query 2..5 (mask 4..5 only)
    ev = _evidence()
    image = _image([63, 63, 63] + BLOCKS)        # the support shifted by 3 slices
    margins = _organ_margins(11, slice(4, 10), 2.0)   # positive one slice beyond each end
    expected = np.zeros((11, 16, 16), np.uint8)
    expected[5:9, 4:8, 4:8] = 1
    mask, choice = align_mask(margins, image, ev)
    assert choice.extent == (5, 8) and choice.mapped == (5, 8) and choice.peak == 2.0
    np.testing.assert_array_equal(mask, expected)
    res = label_free_mask(margins, "align", ev, image)
    assert res.extent == (5, 8) and res.found and "align: slices 5-8" in res.how
    np.testing.assert_array_equal(res.mask, expected)


def test_align_organ_not_found_below_the_score_floor():
    ev = _evidence()                             # floor min(0.5, 2.0) = 0.5
    image = _image([63, 63, 63] + BLOCKS)
    res = label_free_mask(_organ_margins(11, slice(5, 9), 0.25), "align", ev, image)
    assert res.extent is None and not res.found and int(res.mask.sum()) == 0
    assert res.mask.shape == (11, 16, 16) and "organ not found" in res.how


def test_align_organ_not_found_when_no_pixel_is_kept():
    """Slice scores reach the floor only outside the mapped slices 5..8: nothing is kept there,
    so the organ is not found (no range reported for an empty mask)."""
    ev = _evidence()
    image = _image([63, 63, 63] + BLOCKS)
    res = label_free_mask(_organ_margins(11, slice(0, 2), 1.0), "align", ev, image)
    assert res.extent is None and not res.found and int(res.mask.sum()) == 0
    assert "organ not found" in res.how and "paired with slices 5-8" in res.how
    assert "no pixel there has a margin above 0.000" in res.how


def test_align_bad_input():
    ev = _evidence()
    margins = _organ_margins(8, slice(2, 6), 2.0)
    with pytest.raises(ValueError, match="align"):
        label_free_mask(margins, "align")
    with pytest.raises(ValueError, match="align"):
        label_free_mask(margins, "align", ev)                  # no image
    with pytest.raises(ValueError, match="query image has shape"):
        label_free_mask(margins, "align", ev, np.zeros((7, 16, 16)))
    with pytest.raises(ValueError, match="support image has shape"):
        align_evidence(margins, np.zeros((8, 16, 16), bool), np.zeros((8, 16, 8)))


# the slices of CHAOS MR fold 0 (queries 1, 2, 3, 5, support 8; liver, kidneys, spleen), paired
# by their images: mean distance (slices) of the mapped first/last organ slice from the truth
REAL_FOLD0 = ((1, 2, 3, 5), 8)
REAL_MEAN_ERROR_MAX = 3.5        # measured 3.44; proportional mapping along z: 4.34


@requires_real_data
@pytest.mark.realdata
def test_real_scans_align_beats_proportional_mapping(real_data_dir):
    """On the real scans the image pairing puts the organs' first and last slices closer to the
    truth than stretching the support's organ range to the query's length (the naive mapping)."""
    import SimpleITK as sitk

    def load(sid):
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data_dir / f"image_{sid}.nii.gz")))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data_dir / f"label_{sid}.nii.gz")))
        img = img.astype(np.float64)
        return (img - img.mean()) / img.std(), lab                  # MR: each volume z-scored

    queries, support = REAL_FOLD0
    sup_img, sup_lab = load(support)
    sup_desc = slice_descriptors(sup_img)
    aligned, stretched = [], []
    for sid in queries:
        img, lab = load(sid)
        desc = slice_descriptors(img)
        for organ in (1, 2, 3, 4):
            s = np.flatnonzero((sup_lab == organ).any(axis=(1, 2)))
            t = np.flatnonzero((lab == organ).any(axis=(1, 2)))
            z0, z1 = map_extent(desc, sup_desc, int(s[0]), int(s[-1]))
            scale = lab.shape[0] / sup_lab.shape[0]
            p0, p1 = round(s[0] * scale), round((s[-1] + 1) * scale) - 1
            aligned += [abs(z0 - t[0]), abs(z1 - t[-1])]
            stretched += [abs(p0 - t[0]), abs(p1 - t[-1])]
    assert np.mean(aligned) <= REAL_MEAN_ERROR_MAX, (np.mean(aligned), np.mean(stretched))
    assert np.mean(aligned) < np.mean(stretched)
