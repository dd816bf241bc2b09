"""A user's scans in the training geometry and back: preprocessing by the card's recipe (the data
commands' ``data.preprocess``), the loaders' cut to 256 x 256 and normalisation
(``dataloaders.scans``), z-ranges between the two grids, and masks written in the query's own
grid and orientation (``data.geometry.restore_to_raw``).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from data.cards import Card
from data.geometry import blank_on, restore_to_raw
from data.preprocess import preprocess_image, preprocess_scan, recipe_of
from dataloaders.niftiio import write_like
from dataloaders.scans import CUT_HW, NormStats, normalise
from util.io import atomic_write_sitk

__all__ = ["Prepared", "prepare_support", "prepare_query", "normalise_prepared", "support_stats",
           "range_to_training", "write_mask", "mask_volume_ml", "AXIS_ALIGNMENT"]

log = logging.getLogger(__name__)

AXIS_ALIGNMENT = 0.5   # |cos| between the query's slice axis and the training z axis for --z-range
SPACING_RTOL = 0.02    # --preprocessed: spacing this close to the recipe's counts as the same


@dataclasses.dataclass
class Prepared:
    """One scan in the training geometry, arrays H x W x Z cut to ``CUT_HW`` as the loaders do.

    ``grid`` is the training-geometry image (its full size and geometry); ``record`` the
    preprocessing record (None with ``--preprocessed``: the grid is the scan's own).
    """
    name: str
    values: np.ndarray                 # float64 H x W x Z, intensities before normalisation
    grid: sitk.Image
    record: dict[str, Any] | None
    label: np.ndarray | None = None    # uint8 H x W x Z, 1 = organ (support only)
    image: np.ndarray | None = None    # float32 H x W x Z, normalised (normalise_prepared)

    @property
    def n_slices(self) -> int:
        return self.values.shape[2]


def _cut_hwz(img: sitk.Image, dtype: type) -> np.ndarray:
    arr = sitk.GetArrayFromImage(img).transpose(1, 2, 0)            # H x W x Z
    return np.ascontiguousarray(arr[: CUT_HW[0], : CUT_HW[1]]).astype(dtype, copy=False)


def _warn_geometry(img: sitk.Image, card: Card, name: str) -> None:
    """--preprocessed: warn when the spacing is not the recipe's (the user may have forgotten to
    drop the flag)."""
    recipe = recipe_of(card)
    if recipe.kind != "mr" or recipe.spacing is None:
        return
    for axis, (have, want) in enumerate(zip(img.GetSpacing(), recipe.spacing)):
        if want is not None and not np.isclose(have, want, rtol=SPACING_RTOL):
            log.warning("%s: --preprocessed, but spacing %s differs from the training spacing %s "
                        "of %s (axis %d): drop --preprocessed to resample it", name,
                        tuple(round(s, 3) for s in img.GetSpacing()), recipe.spacing, card.name, axis)
            return


def prepare_support(image: sitk.Image, label: sitk.Image, organ: int, card: Card, *,
                    preprocessed: bool, name: str = "support") -> Prepared:
    """The support scan and its organ mask (``label == organ``) in the training geometry.

    The label is reduced to the organ before resampling, so any label values are accepted.

    Raises:
        ValueError: the organ vanishes in the training grid (too small for its spacing).
    """
    binary = sitk.Cast(sitk.Equal(label, int(organ)), sitk.sitkUInt8)
    binary.CopyInformation(image)
    if preprocessed:
        _warn_geometry(image, card, name)
        grid, lab, record = image, binary, None
    else:
        grid, lab, record = preprocess_scan(image, binary, card)
    out = Prepared(name, _cut_hwz(grid, np.float64), grid, record, _cut_hwz(lab, np.uint8))
    if not out.label.any():
        raise ValueError(f"{name}: label {organ} has no voxel left in the training geometry of "
                         f"{card.name} (first {CUT_HW[0]} x {CUT_HW[1]} voxels in-plane): it is "
                         "too small or outside the field of view")
    return out


def prepare_query(image: sitk.Image, card: Card, *, preprocessed: bool, name: str) -> Prepared:
    """A query scan in the training geometry (as the data commands preprocess a scan)."""
    if preprocessed:
        _warn_geometry(image, card, name)
        return Prepared(name, _cut_hwz(image, np.float64), image, None)
    grid, record = preprocess_image(image, card)
    return Prepared(name, _cut_hwz(grid, np.float64), grid, record)


def support_stats(support: Prepared) -> NormStats:
    """Fallback CT statistics: mean and std of the support scan's (cut) volume."""
    return NormStats(float(support.values.mean()), float(support.values.std()))


def normalise_prepared(scan: Prepared, card: Card, stats: NormStats | None) -> Prepared:
    """Set ``scan.image``: the card's normalisation (MR per-volume z-score, CT ``stats``)."""
    scan.image = normalise(card, scan.values, stats)
    return scan


def range_to_training(scan: Prepared, z_range: tuple[int, int]) -> tuple[int, int]:
    """A slice range of the query's own grid as a slice range of the training grid.

    With ``--preprocessed`` the grids are one. Otherwise the centres of the first and last slice
    are mapped through physical space onto the training grid's z axis (nearest slice; the order
    is restored when the recipe flipped z), clipped to the training grid.

    Raises:
        ValueError: the query's slice axis is not the training grid's z axis (e.g. a sagittal
            array order), so its slice indices cannot bound axial slices.
    """
    z0, z1 = int(z_range[0]), int(z_range[1])
    if scan.record is None:
        return z0, min(z1, scan.n_slices - 1)
    raw, out = blank_on(scan.record["raw"]), blank_on(scan.record["output"])
    raw_z = np.asarray(raw.GetDirection()).reshape(3, 3)[:, 2]
    out_z = np.asarray(out.GetDirection()).reshape(3, 3)[:, 2]
    if abs(float(raw_z @ out_z)) < AXIS_ALIGNMENT:
        raise ValueError(f"{scan.name}: --z-range counts slices along the query's third array "
                         f"axis, direction {tuple(np.round(raw_z, 3))}, which is not the axial "
                         f"axis {tuple(np.round(out_z, 3))} of the training geometry: give the "
                         "range on an axially stored copy, or leave it out")
    cx, cy = (raw.GetSize()[0] - 1) / 2.0, (raw.GetSize()[1] - 1) / 2.0
    ends = []
    for z in (z0, z1):
        point = raw.TransformContinuousIndexToPhysicalPoint((cx, cy, float(z)))
        ends.append(out.TransformPhysicalPointToContinuousIndex(point)[2])
    lo, hi = sorted(int(np.floor(v + 0.5)) for v in ends)
    n = int(scan.record["output"]["size"][2])
    return max(lo, 0), min(max(hi, 0), n - 1)


def write_mask(mask_zyx: np.ndarray, scan: Prepared, label: int, target: Path) -> sitk.Image:
    """Write ``mask_zyx`` (Z x H x W 0/1 on the cut training grid) as ``label`` values in the
    query's own grid and orientation; returns the written image."""
    values = (np.asarray(mask_zyx) > 0).astype(np.uint8) * np.uint8(label)
    if scan.record is not None:
        img = restore_to_raw(values, scan.record, labels=[int(label)])
        atomic_write_sitk(img, target)
        return img
    x, y, z = scan.grid.GetSize()
    full = np.zeros((z, y, x), dtype=np.uint8)
    full[:, : values.shape[1], : values.shape[2]] = values
    write_like(full, scan.grid, target)
    out = sitk.GetImageFromArray(full)
    out.CopyInformation(scan.grid)
    return out


def mask_volume_ml(mask: sitk.Image) -> tuple[int, float]:
    """(voxels, millilitres) of the non-zero voxels of a mask (spacing in mm)."""
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return voxels, voxels * float(np.prod(mask.GetSpacing())) / 1000.0
