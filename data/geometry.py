"""Voxel grids and the way back: grids as JSON-able dicts, resampling onto a grid, label
resampling class by class (docs/method.md, 'Preprocessing', step 5), and ``restore_to_raw``,
which puts a mask on the preprocessed grid back onto the raw scan's grid and orientation.

Every grid here is physically correct (origin, spacing, direction), so one resampling maps any
grid onto any other: crops, pads, row flips and spacing changes are all undone by it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

__all__ = ["grid_of", "blank_on", "read_record", "resample_image", "resample_labels",
           "restore_to_raw", "check_same_grid", "GRID_ATOL"]

log = logging.getLogger(__name__)

GRID_ATOL = 1e-3    # mm (origin), mm (spacing), cosine (direction): tolerance of "same grid"


def grid_of(image: sitk.Image) -> dict[str, list[float] | list[int]]:
    """The grid of ``image`` as a JSON-able dict (SimpleITK (x, y, z) order)."""
    return {"size": [int(v) for v in image.GetSize()],
            "spacing": [float(v) for v in image.GetSpacing()],
            "origin": [float(v) for v in image.GetOrigin()],
            "direction": [float(v) for v in image.GetDirection()]}


def blank_on(grid: Mapping[str, Any], pixel: int = sitk.sitkUInt8) -> sitk.Image:
    """An all-zero image on ``grid`` (a dict of ``grid_of``)."""
    img = sitk.Image([int(v) for v in grid["size"]], pixel)
    img.SetSpacing([float(v) for v in grid["spacing"]])
    img.SetOrigin([float(v) for v in grid["origin"]])
    img.SetDirection([float(v) for v in grid["direction"]])
    return img


def check_same_grid(image: sitk.Image, label: sitk.Image, image_name: str, label_name: str) -> None:
    """Raise ValueError naming both files when ``label`` is not on ``image``'s grid."""
    if image.GetSize() != label.GetSize():
        raise ValueError(f"{label_name}: label size {label.GetSize()} (x, y, z) differs from "
                         f"image {image_name} size {image.GetSize()}")
    for what in ("spacing", "origin", "direction"):
        a = np.asarray(getattr(image, f"Get{what.capitalize()}")())
        b = np.asarray(getattr(label, f"Get{what.capitalize()}")())
        if not np.allclose(a, b, atol=GRID_ATOL):
            raise ValueError(f"{label_name}: label {what} {tuple(np.round(b, 4))} differs from "
                             f"image {image_name} {what} {tuple(np.round(a, 4))}")


def resample_image(image: sitk.Image, reference: sitk.Image, *, interpolator: int = sitk.sitkLinear,
                   default: float = 0.0, pixel: int | None = None) -> sitk.Image:
    """``image`` sampled on ``reference``'s grid (outside the input: ``default``).

    The output keeps the input's pixel type unless ``pixel`` is given (an integer input is
    interpolated in floating point and cast back by ITK, as the reference did).
    """
    out_pixel = image.GetPixelID() if pixel is None else pixel
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default), out_pixel)


def resample_labels(label: sitk.Image, reference: sitk.Image, n_classes: int) -> sitk.Image:
    """Labels resampled class by class (docs/method.md, 'Preprocessing'): for c = 0 ..
    n_classes - 1 the binary mask of c is resampled linearly, rounded half to even (``np.rint``),
    and c is written where it is 1; later classes win. Returns uint8 on ``reference``'s grid.
    """
    lab = sitk.GetArrayFromImage(label)
    out = np.zeros(reference.GetSize()[::-1], np.uint8)
    for c in range(n_classes):
        binary = sitk.GetImageFromArray((lab == c).astype(np.float32))
        binary.CopyInformation(label)
        res = sitk.GetArrayFromImage(resample_image(binary, reference, pixel=sitk.sitkFloat32))
        out[np.rint(res) == 1] = c
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(reference)
    return img


def read_record(path: str | Path) -> dict[str, Any]:
    """A ``record_<id>.json`` written by the preprocessing.

    Raises:
        FileNotFoundError: no such file (it is written beside each preprocessed scan by
            ``python -m data.prepare``; the published CHAOS files come without records).
        ValueError: not JSON, or without the ``raw`` and ``output`` grids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no preprocessing record (written beside each scan by "
                                "`python -m data.prepare`; published scans come without one)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    missing = [k for k in ("raw", "output") if k not in record]
    if missing:
        raise ValueError(f"{path}: preprocessing record lacks {missing}")
    return record


def restore_to_raw(mask_zyx: np.ndarray, record: Mapping[str, Any], *,
                   labels: Sequence[int] | None = None) -> sitk.Image:
    """A mask on the preprocessed grid, back on the raw scan's grid and orientation.

    Args:
        mask_zyx: Z x H x W integer labels on the preprocessed grid (``record['output']``);
            H and W may be smaller than the grid's (the loaders cut volumes to the first
            256 x 256): the rest counts as background.
        record: the ``record_<id>.json`` of the scan (keys ``raw`` and ``output``, grids of
            ``grid_of``).
        labels: label values to transfer (default: every non-zero value in the mask).

    Returns:
        uint8 image on ``record['raw']``: each raw voxel takes the label whose linearly
        interpolated indicator is largest (background outside the preprocessed grid).

    Raises:
        ValueError: the mask does not fit the record's output grid.
    """
    for key in ("raw", "output"):
        if key not in record:
            raise ValueError(f"preprocessing record lacks {key!r} (keys: {sorted(record)})")
    mask = np.asarray(mask_zyx)
    out_size = [int(v) for v in record["output"]["size"]]
    want = (out_size[2], out_size[1], out_size[0])
    if mask.ndim != 3 or mask.shape[0] != want[0] or mask.shape[1] > want[1] or mask.shape[2] > want[2]:
        raise ValueError(f"mask of shape {mask.shape} (Z x H x W) does not fit the preprocessed "
                         f"grid {want} of the record")
    full = np.zeros(want, np.int32)
    full[:, : mask.shape[1], : mask.shape[2]] = mask
    values = sorted(int(v) for v in np.unique(full) if v != 0) if labels is None else [int(v) for v in labels]
    output_grid = blank_on(record["output"])
    raw = blank_on(record["raw"])
    best = sitk.GetArrayFromImage(resample_image(
        _indicator(full == 0, output_grid), raw, default=1.0, pixel=sitk.sitkFloat32))
    result = np.zeros(best.shape, np.uint8)
    for value in values:
        weight = sitk.GetArrayFromImage(resample_image(
            _indicator(full == value, output_grid), raw, default=0.0, pixel=sitk.sitkFloat32))
        win = weight > best
        result[win] = value
        best = np.where(win, weight, best)
    img = sitk.GetImageFromArray(result)
    img.CopyInformation(raw)
    return img


def _indicator(mask_zyx: np.ndarray, grid: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(mask_zyx.astype(np.float32))
    img.CopyInformation(grid)
    return img
