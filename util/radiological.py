"""Slices turned to the radiological display convention, from the image's direction matrix.

Scans are stored in whatever orientation their file has; the published CHAOS files, for example,
have direction diag(1, -1, 1), so their array rows run from posterior to anterior and a slice shown
as stored is upside down. Every figure goes through :func:`to_radiological`, which puts an axial
slice with the patient's anterior side at the top and the patient's right on the image's left
(as if looking up from the feet), a coronal slice with superior at the top and the patient's right
on the left, and a sagittal slice with superior at the top and anterior on the left.

Array convention (``dataloaders.niftiio``): an H x W slice of an H x W x Z volume, rows along
SimpleITK index axis 1 (j) and columns along index axis 0 (i). The direction matrix is SimpleITK's
``GetDirection()`` (9 numbers, row-major; column k is the world direction of index axis k) in LPS
world coordinates: +x towards the patient's left, +y posterior, +z superior.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

__all__ = ["DisplayOrientation", "radiological_orientation", "to_radiological", "apply_orientation"]

LPS_X, LPS_Y, LPS_Z = 0, 1, 2            # world axes: left, posterior, superior (positive ends)
ROW_INDEX_AXIS, COL_INDEX_AXIS = 1, 0    # index axes of an H x W slice (j rows, i columns)
# per slice plane (the world axis nearest the slice normal): the world axis and sign that should
# point down the displayed image, then the one that should point to its right
DISPLAY_AXES = {
    LPS_Z: ((LPS_Y, +1), (LPS_X, +1)),   # axial: anterior at the top, patient's left on the right
    LPS_Y: ((LPS_Z, -1), (LPS_X, +1)),   # coronal: superior at the top, patient's left on the right
    LPS_X: ((LPS_Z, -1), (LPS_Y, +1)),   # sagittal: superior at the top, posterior on the right
}
# patient side at the negative / positive end of each world axis (edge letters of a figure)
SIDE_LETTERS = {LPS_X: ("R", "L"), LPS_Y: ("A", "P"), LPS_Z: ("I", "S")}


@dataclasses.dataclass(frozen=True)
class DisplayOrientation:
    """How to turn a stored H x W slice for display: transpose first, then flip.

    ``top`` and ``left`` are the patient sides at the displayed image's top and left edges
    (``"A"``, ``"R"`` for an axial slice).
    """
    transpose: bool
    flip_rows: bool
    flip_cols: bool
    top: str
    left: str


def _direction_matrix(direction: Sequence[float]) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64).ravel()
    if d.size != 9 or not np.all(np.isfinite(d)):
        raise ValueError(f"direction: expected the 9 finite numbers of a 3-D direction matrix "
                         f"(SimpleITK GetDirection()), got {tuple(d.tolist())}")
    m = d.reshape(3, 3)
    if abs(abs(np.linalg.det(m)) - 1.0) > 1e-3:
        raise ValueError(f"direction: not a rotation or reflection (determinant "
                         f"{np.linalg.det(m):.4g}): {tuple(d.tolist())}")
    return m


def radiological_orientation(direction: Sequence[float]) -> DisplayOrientation:
    """The transpose and flips that put a stored H x W slice in radiological display.

    Args:
        direction: SimpleITK ``GetDirection()`` of the volume the slice comes from (9 numbers).
    Returns:
        The :class:`DisplayOrientation`; oblique slices follow the nearest world axes.
    Raises:
        ValueError: ``direction`` is not a 3 x 3 rotation or reflection.
    """
    m = _direction_matrix(direction)
    rows_w, cols_w = m[:, ROW_INDEX_AXIS], m[:, COL_INDEX_AXIS]   # world steps of +row, +column
    plane = int(np.argmax(np.abs(np.cross(cols_w, rows_w))))
    (down_axis, down_sign), (right_axis, right_sign) = DISPLAY_AXES[plane]
    transpose = abs(cols_w[down_axis]) > abs(rows_w[down_axis])
    down_w, right_w = (cols_w, rows_w) if transpose else (rows_w, cols_w)
    top_side = SIDE_LETTERS[down_axis][0 if down_sign > 0 else 1]
    left_side = SIDE_LETTERS[right_axis][0 if right_sign > 0 else 1]
    return DisplayOrientation(transpose=bool(transpose),
                              flip_rows=bool(down_w[down_axis] * down_sign < 0),
                              flip_cols=bool(right_w[right_axis] * right_sign < 0),
                              top=top_side, left=left_side)


def to_radiological(slice_hw: np.ndarray, direction: Sequence[float]) -> np.ndarray:
    """A stored H x W slice (image or mask) as displayed in the radiological convention.

    Args:
        slice_hw: H x W array, rows along index axis j, columns along index axis i.
        direction: SimpleITK ``GetDirection()`` of its volume.
    Returns:
        The H x W (or W x H, for a transposed orientation) array to draw, row 0 at the top.
    Raises:
        ValueError: ``slice_hw`` is not 2-D, or a bad ``direction``.
    """
    return apply_orientation(slice_hw, radiological_orientation(direction))


def apply_orientation(slice_hw: np.ndarray, o: DisplayOrientation) -> np.ndarray:
    """``to_radiological`` with the orientation already computed (one per volume, however many
    slices or masks of it are drawn).

    Raises:
        ValueError: ``slice_hw`` is not 2-D.
    """
    arr = np.asarray(slice_hw)
    if arr.ndim != 2:
        raise ValueError(f"to_radiological: expected an H x W slice, got shape {arr.shape}")
    if o.transpose:
        arr = arr.T
    if o.flip_rows:
        arr = arr[::-1]
    if o.flip_cols:
        arr = arr[:, ::-1]
    return arr
