"""util.radiological: a synthetic scan whose patient sides are known, written with several
direction matrices and read back as the loaders read it, is displayed with its anterior,
patient-right corner at the top left and its anterior, patient-left corner at the top right
(axial; superior instead of anterior for a coronal slice), whatever the file's orientation.

LPS world (SimpleITK): +x patient's left, +y posterior, +z superior; ``direction`` is row-major
with column k the world direction of index axis k.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dataloaders.niftiio import read_hwz
from util.radiological import radiological_orientation, to_radiological

SIZE_IJK = (24, 16, 3)          # index sizes (i, j, k): not square, so a transpose would show
SPACING = (1.5, 1.5, 4.0)
MARKER_FRACTION = 0.25          # the marker fills this fraction of each in-plane world extent

AXIAL = {
    # the identity: rows run anterior -> posterior, columns right -> left (nothing to do)
    "identity-LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    # the published CHAOS files: rows run posterior -> anterior (stored upside down)
    "published-CHAOS-diag(1,-1,1)": (1, 0, 0, 0, -1, 0, 0, 0, 1),
    # RAS-stored arrays (the usual NIfTI tool output): both in-plane axes reversed
    "RAS-diag(-1,-1,1)": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    # columns along posterior, rows along the patient's left (index axes swapped), feet first
    "swapped-i=P,j=L,k=I": (0, 1, 0, 1, 0, 0, 0, 0, -1),
    # columns along anterior, rows along the patient's right
    "swapped-i=A,j=R,k=S": (0, -1, 0, -1, 0, 0, 0, 0, 1),
}
CORONAL = {
    # slices along y: columns along the patient's left, rows along inferior -> superior
    "coronal-i=L,j=S,k=P": (1, 0, 0, 0, 0, 1, 0, 1, 0),
}


def _world_xyz(direction: tuple[float, ...]) -> np.ndarray:
    """World coordinates (mm) of every voxel, as a (z, y, x)-indexed SimpleITK array ... x 3."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in SIZE_IJK[::-1]), indexing="ij")
    idx_mm = np.stack([i * SPACING[0], j * SPACING[1], k * SPACING[2]], axis=-1)
    return idx_mm @ np.asarray(direction, dtype=np.float64).reshape(3, 3).T


def _write_marked_scan(path, direction, corners: dict[float, dict[int, str]]) -> None:
    """A zero scan with a block of each value at its corner ({world axis: 'min' | 'max'}),
    written with ``direction``."""
    world = _world_xyz(direction)
    vol = np.zeros(world.shape[:3], dtype=np.float32)
    for value, corner in corners.items():
        marker = np.ones(world.shape[:3], dtype=bool)
        for axis, end in corner.items():
            lo, hi = world[..., axis].min(), world[..., axis].max()
            cut = MARKER_FRACTION * (hi - lo)
            marker &= world[..., axis] <= lo + cut if end == "min" else world[..., axis] >= hi - cut
        vol[marker] = value
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(SPACING)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


TOP_LEFT, TOP_RIGHT = 2.0, 1.0  # marker values


def _assert_markers_on_top(shown: np.ndarray) -> None:
    """The TOP_LEFT block in the top-left quadrant, the TOP_RIGHT block in the top-right one."""
    h, w = shown.shape
    for value, left in [(TOP_LEFT, True), (TOP_RIGHT, False)]:
        rows, cols = np.nonzero(shown == value)
        assert rows.size, f"marker {value} lost"
        in_cols = cols.max() < w / 2 if left else cols.min() >= w / 2
        assert rows.max() < h / 2 and in_cols, (
            f"marker {value} at rows {rows.min()}-{rows.max()} of {h}, "
            f"columns {cols.min()}-{cols.max()} of {w}")
    assert shown[0, 0] == TOP_LEFT and shown[0, -1] == TOP_RIGHT      # touching the corners


@pytest.mark.parametrize("direction", list(AXIAL.values()), ids=list(AXIAL))
def test_axial_anterior_right_corner_shown_top_left(tmp_path, direction):
    path = tmp_path / "scan.nii.gz"
    # anterior (min y) at the patient's right (min x) and left (max x)
    _write_marked_scan(path, direction, {TOP_LEFT: {0: "min", 1: "min"}, TOP_RIGHT: {0: "max", 1: "min"}})
    vol_hwz, img = read_hwz(path)
    slice_hw = vol_hwz[..., SIZE_IJK[2] // 2]
    shown = to_radiological(slice_hw, img.GetDirection())
    _assert_markers_on_top(shown)
    o = radiological_orientation(img.GetDirection())
    assert (o.top, o.left) == ("A", "R")


@pytest.mark.parametrize("direction", list(CORONAL.values()), ids=list(CORONAL))
def test_coronal_superior_right_corner_shown_top_left(tmp_path, direction):
    path = tmp_path / "scan.nii.gz"
    # superior (max z) at the patient's right (min x) and left (max x)
    _write_marked_scan(path, direction, {TOP_LEFT: {0: "min", 2: "max"}, TOP_RIGHT: {0: "max", 2: "max"}})
    vol_hwz, img = read_hwz(path)
    shown = to_radiological(vol_hwz[..., SIZE_IJK[2] // 2], img.GetDirection())
    _assert_markers_on_top(shown)
    o = radiological_orientation(img.GetDirection())
    assert (o.top, o.left) == ("S", "R")


def test_published_orientation_by_hand():
    # diag(1, -1, 1): +row steps towards -y (anterior), so the rows are flipped to put anterior
    # at the top; +column steps towards +x (patient's left), already on the right
    o = radiological_orientation((1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert (o.transpose, o.flip_rows, o.flip_cols) == (False, True, False)
    stored = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(to_radiological(stored, (1, 0, 0, 0, -1, 0, 0, 0, 1)), [[3, 4], [1, 2]])


@pytest.mark.parametrize("direction, message", [
    ((1, 0, 0, 1), "9 finite numbers"),
    ((1, 0, 0, 0, 0, 0, 0, 0, 1), "determinant"),
], ids=["2-D direction", "singular"])
def test_bad_direction_named(direction, message):
    with pytest.raises(ValueError, match=message):
        radiological_orientation(direction)


def test_slice_must_be_2d():
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2\)"):
        to_radiological(np.zeros((2, 2, 2)), (1, 0, 0, 0, 1, 0, 0, 0, 1))
