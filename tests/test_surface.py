"""util.metric surface distances (HD95, ASSD) on shapes with hand-computable answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from util.metric import assd, hd95, surface_distances

SLICE_MM = 7.7      # CHAOS slice thickness after preprocessing (SPEC §2)
PIXEL_MM = 1.25


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_two_discs_known_distance_apart():
    # discs of radius r, centres D apart (on a row). A point of A's circle at angle t from the
    # far side is sqrt(D^2 + r^2 + 2 D r cos t) - r from B's circle, t uniform on [0, pi]:
    # the maximum (t = 0) is D, the 95th percentile is at t = 0.05 pi, the mean is an integral.
    r, d = 20, 60
    a = disc((64, 128), (32, 24), r)
    b = disc((64, 128), (32, 24 + d), r)
    f = lambda t: np.sqrt(d * d + r * r + 2 * d * r * np.cos(t)) - r  # noqa: E731
    expected_hd95 = f(0.05 * math.pi)
    expected_mean = float(np.mean(f(np.linspace(0, math.pi, 100001))))
    # rasterised circles: within one pixel of the continuous answers
    assert hd95(a, b, (1.0, 1.0), percentile=100) == pytest.approx(d, abs=1.0)
    assert hd95(a, b, (1.0, 1.0)) == pytest.approx(expected_hd95, abs=1.0)
    assert assd(a, b, (1.0, 1.0)) == pytest.approx(expected_mean, abs=1.0)
    # the spacing scales every distance
    assert hd95(a, b, (2.0, 2.0)) == pytest.approx(2 * hd95(a, b, (1.0, 1.0)))


def test_identical_masks_have_zero_distance():
    a = disc((32, 32), (16, 16), 8)
    assert hd95(a, a, 1.0) == 0.0 and assd(a, a, 1.0) == 0.0


@pytest.mark.parametrize("axis, expected", [(0, SLICE_MM), (1, PIXEL_MM), (2, PIXEL_MM)],
                         ids=["shift-z", "shift-y", "shift-x"])
def test_cube_vs_shifted_cube_anisotropic(axis, expected):
    # a 6-voxel cube shifted by one voxel: every surface voxel is 0 or one voxel step away from
    # the other surface (the farthest: the face that left), so the Hausdorff distance is the
    # spacing of the shifted axis
    vol = np.zeros((12, 12, 12), bool)
    vol[3:9, 3:9, 3:9] = True
    shifted = np.roll(vol, 1, axis=axis)
    spacing = (SLICE_MM, PIXEL_MM, PIXEL_MM)
    assert hd95(vol, shifted, spacing, percentile=100) == pytest.approx(expected)
    # the 6 x 6 face that left is one step from the other surface; the 6 x 6 face at the other
    # end is one step from the new face unless the in-plane border is nearer: at most `expected`
    d_pg, d_gp = surface_distances(vol, shifted, spacing)
    assert d_pg.max() == pytest.approx(expected) and d_gp.max() == pytest.approx(expected)
    assert np.isclose(d_pg, expected).sum() >= 36


def test_one_slice_shift_of_a_slab_is_one_slice_thickness():
    # a 40 x 40 x 3-slice slab against itself one slice higher at 7.7 mm: the bottom face
    # (1600 voxels) is 7.7 mm from the other surface, the middle slice's rim 0 mm, the top
    # face's inner part (more than 7.7 / 1.25 pixels from the rim) 7.7 mm again: more than 5 %
    # of either direction sits at 7.7, which is also the largest distance -> HD95 = 7.7
    vol = np.zeros((7, 44, 44), bool)
    vol[2:5, 2:42, 2:42] = True
    shifted = np.roll(vol, 1, axis=0)
    assert hd95(vol, shifted, (SLICE_MM, PIXEL_MM, PIXEL_MM)) == pytest.approx(SLICE_MM)


def test_assd_of_parallel_lines_by_hand():
    # 2-D: two horizontal 1-pixel lines of 10 pixels, 3 rows apart, spacing 2 mm x 1 mm:
    # each pixel's nearest pixel on the other line is straight across, 3 * 2 = 6 mm
    a = np.zeros((10, 20), bool)
    b = np.zeros((10, 20), bool)
    a[2, 5:15] = True
    b[5, 5:15] = True
    assert assd(a, b, (2.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, b, (2.0, 1.0)) == pytest.approx(6.0)


def test_empty_cases():
    a = disc((16, 16), (8, 8), 4)
    empty = np.zeros_like(a)
    assert math.isnan(hd95(empty, empty, 1.0)) and math.isnan(assd(empty, empty, 1.0))
    assert hd95(a, empty, 1.0) == math.inf and assd(empty, a, 1.0) == math.inf


def test_bad_spacing_and_shape():
    a = np.zeros((4, 4, 4), bool)
    with pytest.raises(ValueError, match="expected 3 values"):
        hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        hd95(a, a, (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4\)"):
        assd(a, a[0], 1.0)
