"""Preprocessing of one scan to the training geometry (docs/method.md, 'Preprocessing'), shared
by the dataset converters and by ``segment.py`` (a user's own scan).

Recipes (the card's optional ``preprocessing`` object; default by ``modality``):

- ``mr`` (CHAOS, C0): optional reorientation to a fixed array orientation (CHAOS: ``LAS``, the
  published files' ``diag(1, -1, 1)``: rows flipped against DICOM rows), clip above the 99.5th
  percentile (the clip value truncated to an integer, as the original), optional rescale to a range,
  linear resampling to ``spacing`` with ``int(size * old / new + 1)`` voxels per axis (a
  ``null`` spacing keeps that axis as it is), labels class by class, centre crop/pad in-plane to
  ``size_xy`` (window ``[c - 128, c + 128)``, ``c = size // 2``; pad value the volume minimum,
  0 for labels) with the origin moved to the window's true position (the original left it unmoved).
- ``ct`` (Synapse): window ``[-125, 275]``, per-volume min-max to 0..255, cut ``roi_cut`` voxels
  from each in-plane border, in-plane spacing times ``inplane_factor`` (448/256), z spacing
  unchanged, ``int(size * old / new + 1)`` voxels on every axis (z included: Z + 1).

Every call also returns a record (``record_<id>.json``): the raw and output grids, which is all
``data.geometry.restore_to_raw`` needs, plus the steps' parameters for the reader.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import SimpleITK as sitk

from data.cards import Card
from data.geometry import grid_of, resample_image, resample_labels

__all__ = ["Recipe", "recipe_of", "preprocess_scan", "preprocess_image", "preprocess_mr",
           "preprocess_ct", "RECORD_VERSION"]

log = logging.getLogger(__name__)

RECORD_VERSION = 1
MR_CLIP_PERCENTILE = 99.5            # docs/method.md, 'Preprocessing', CHAOS step 4
MR_SPACING = (1.25, 1.25, 7.70)      # ... CHAOS step 5 (x, y, z) mm
SIZE_XY = (256, 256)                 # ... CHAOS step 6
CT_WINDOW = (-125.0, 275.0)          # ... Synapse CT (HU)
CT_RANGE = 255.0                     # ... Synapse CT: rescaled to [0, 255]
CT_ROI_CUT = 32                      # ... Synapse CT: voxels cut per in-plane border
CT_INPLANE_FACTOR = 448.0 / 256.0    # ... Synapse CT


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one dataset's scans are brought to the training geometry (see module docstring)."""
    kind: str                                   # 'mr' | 'ct'
    orientation: str | None = None              # DICOM orientation code, e.g. 'LAS'; None keeps
    clip_percentile: float | None = MR_CLIP_PERCENTILE
    rescale: tuple[float, float] | None = None  # mr: map [min, clip] onto this range
    spacing: tuple[float | None, float | None, float | None] = MR_SPACING
    size_xy: tuple[int, int] | None = SIZE_XY
    window: tuple[float, float] = CT_WINDOW
    roi_cut: int = CT_ROI_CUT
    inplane_factor: float = CT_INPLANE_FACTOR


def recipe_of(card: Card) -> Recipe:
    """The card's ``preprocessing`` object as a Recipe (defaults by modality).

    Raises:
        ValueError: an unknown recipe kind or key (the message names the card).
    """
    raw = card.extra.get("preprocessing")
    if raw is None:
        kind = "ct" if card.modality.upper() == "CT" else "mr"
        return Recipe(kind, size_xy=None) if kind == "ct" else Recipe(kind)
    if not isinstance(raw, dict) or raw.get("recipe") not in ("mr", "ct"):
        raise ValueError(f"dataset card {card.path}: 'preprocessing' needs recipe 'mr' or 'ct', "
                         f"got {raw!r}")
    known = {f.name for f in dataclasses.fields(Recipe)} - {"kind"}
    unknown = sorted(set(raw) - known - {"recipe"})
    if unknown:
        raise ValueError(f"dataset card {card.path}: unknown 'preprocessing' key(s) {unknown} "
                         f"(known: recipe, {', '.join(sorted(known))})")
    fields: dict[str, Any] = {k: v for k, v in raw.items() if k != "recipe"}
    for key in ("rescale", "spacing", "size_xy", "window"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    if raw["recipe"] == "ct":
        fields.setdefault("size_xy", None)
    return Recipe(raw["recipe"], **fields)


def _array_image(arr_zyx: np.ndarray, like: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr_zyx)
    img.CopyInformation(like)
    return img


def _target_grid(image: sitk.Image, spacing: tuple[float | None, ...]) -> sitk.Image:
    """The resampled grid: same origin and direction, ``int(n * old / new + 1)`` voxels per axis
    (docs/method.md, 'Preprocessing'; an axis whose new spacing is None keeps its spacing and size)."""
    size, new_spacing = [], []
    for n, old, new in zip(image.GetSize(), image.GetSpacing(), spacing):
        if new is None:
            size.append(int(n))
            new_spacing.append(float(old))
        else:
            size.append(int(n * old / float(new) + 1))
            new_spacing.append(float(new))
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing(new_spacing)
    ref.SetOrigin(image.GetOrigin())
    ref.SetDirection(image.GetDirection())
    return ref


def _crop_pad_xy(arr_zyx: np.ndarray, size_xy: tuple[int, int], pad_value: float
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Centre window ``[c - n/2, c + n/2)`` with ``c = size // 2`` on y and x; returns the array
    and the window's start index (x, y), negative where padded."""
    nz, ny, nx = arr_zyx.shape
    out_x, out_y = size_xy
    y0, x0 = ny // 2 - out_y // 2, nx // 2 - out_x // 2
    out = np.full((nz, out_y, out_x), pad_value, arr_zyx.dtype)
    sy0, sy1 = max(y0, 0), min(y0 + out_y, ny)
    sx0, sx1 = max(x0, 0), min(x0 + out_x, nx)
    out[:, sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = arr_zyx[:, sy0:sy1, sx0:sx1]
    return out, (x0, y0)


def _shifted(like: sitk.Image, start_xy: tuple[int, int], arr_zyx: np.ndarray) -> sitk.Image:
    """``arr_zyx`` on ``like``'s grid moved to start at index (x0, y0, 0)."""
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(like.GetSpacing())
    img.SetDirection(like.GetDirection())
    img.SetOrigin(like.TransformContinuousIndexToPhysicalPoint(
        (float(start_xy[0]), float(start_xy[1]), 0.0)))
    return img


def _check_label(label: sitk.Image, image: sitk.Image, card: Card) -> None:
    if label.GetSize() != image.GetSize():
        raise ValueError(f"label size {label.GetSize()} differs from image size {image.GetSize()}")
    values = np.unique(sitk.GetArrayViewFromImage(label))
    bad = [int(v) for v in values if not 0 <= v < card.n_classes]
    if bad:
        raise ValueError(f"label values {bad} are not classes of dataset {card.name} "
                         f"(0..{card.n_classes - 1})")


def preprocess_mr(image: sitk.Image, label: sitk.Image | None, card: Card,
                  recipe: Recipe | None = None) -> tuple[sitk.Image, sitk.Image | None, dict]:
    """MR recipe (module docstring). ``label`` holds card class indices on ``image``'s grid.

    Returns:
        image (float32, Z x 256 x 256 for CHAOS), label (uint8) or None, record dict.
    """
    recipe = recipe or recipe_of(card)
    raw_grid = grid_of(image)
    if label is not None:
        _check_label(label, image, card)
        label = sitk.Cast(label, sitk.sitkUInt8)
        label.CopyInformation(image)
    if recipe.orientation:
        image = sitk.DICOMOrient(image, recipe.orientation)
        if label is not None:
            label = sitk.DICOMOrient(label, recipe.orientation)
    arr = sitk.GetArrayFromImage(image)
    steps: dict[str, Any] = {"orientation": recipe.orientation}
    if recipe.clip_percentile is not None:
        high = float(np.percentile(arr, recipe.clip_percentile))
        clip = math.trunc(high)           # written into an integer array by the reference (§8)
        arr = np.where(arr > high, np.asarray(clip, arr.dtype), arr)
        steps["clip"] = clip
    if recipe.rescale is not None:
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            raise ValueError(f"constant image (all {lo}): cannot rescale to {recipe.rescale}")
        a, b = recipe.rescale
        arr = (a + (arr.astype(np.float64) - lo) / (hi - lo) * (b - a)).astype(np.float32)
        steps["rescale_from"] = [lo, hi]
    image = _array_image(arr, image)
    ref = _target_grid(image, recipe.spacing)
    res_img = resample_image(image, ref)
    steps["resampled"] = grid_of(res_img)
    res_arr = sitk.GetArrayFromImage(res_img).astype(np.float32)
    res_lab = resample_labels(label, ref, card.n_classes) if label is not None else None
    if recipe.size_xy is not None:
        res_arr, start = _crop_pad_xy(res_arr, recipe.size_xy, float(res_arr.min()))
        out_img = _shifted(res_img, start, res_arr)
        steps["crop_start_xy"] = list(start)
        out_lab = None
        if res_lab is not None:
            lab_arr, _ = _crop_pad_xy(sitk.GetArrayFromImage(res_lab), recipe.size_xy, 0)
            out_lab = _shifted(res_img, start, lab_arr)
    else:
        out_img = _array_image(res_arr, res_img)
        out_lab = res_lab
    record = _record(card, recipe, raw_grid, out_img, steps)
    return out_img, out_lab, record


def preprocess_ct(image: sitk.Image, label: sitk.Image | None, card: Card,
                  recipe: Recipe | None = None) -> tuple[sitk.Image, sitk.Image | None, dict]:
    """CT recipe (module docstring). ``label`` holds card class indices on ``image``'s grid.

    Returns:
        image (float32 in 0..255), label (uint8) or None, record dict.

    Raises:
        ValueError: an in-plane size not larger than twice the ROI cut, or a constant volume.
    """
    recipe = recipe or recipe_of(card)
    raw_grid = grid_of(image)
    if label is not None:
        _check_label(label, image, card)
    arr = np.clip(sitk.GetArrayFromImage(image).astype(np.float64), *recipe.window)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise ValueError(f"constant CT volume after the window {recipe.window}: nothing to rescale")
    arr = (arr - lo) / (hi - lo) * CT_RANGE
    cut = int(recipe.roi_cut)
    nz, ny, nx = arr.shape
    if min(ny, nx) <= 2 * cut:
        raise ValueError(f"in-plane size {nx} x {ny} is too small for the {cut}-voxel ROI cut")
    start = (cut, cut)
    cut_img = _shifted(image, start, arr[:, cut: ny - cut, cut: nx - cut])
    sx, sy, sz = cut_img.GetSpacing()
    ref = _target_grid(cut_img, (sx * recipe.inplane_factor, sy * recipe.inplane_factor, sz))
    out_img = sitk.Cast(resample_image(cut_img, ref), sitk.sitkFloat32)
    out_lab = None
    if label is not None:
        lab_arr = sitk.GetArrayFromImage(label).astype(np.uint8)
        cut_lab = _shifted(image, start, lab_arr[:, cut: ny - cut, cut: nx - cut])
        out_lab = resample_labels(cut_lab, ref, card.n_classes)
    steps: dict[str, Any] = {"window": list(recipe.window), "rescale_from": [lo, hi],
                             "roi_cut": cut, "resampled": grid_of(out_img)}
    if recipe.size_xy is not None:
        res_arr, start2 = _crop_pad_xy(sitk.GetArrayFromImage(out_img), recipe.size_xy,
                                       float(sitk.GetArrayViewFromImage(out_img).min()))
        res_img = out_img
        out_img = _shifted(res_img, start2, res_arr)
        if out_lab is not None:
            lab2, _ = _crop_pad_xy(sitk.GetArrayFromImage(out_lab), recipe.size_xy, 0)
            out_lab = _shifted(res_img, start2, lab2)
        steps["crop_start_xy"] = list(start2)
    return out_img, out_lab, _record(card, recipe, raw_grid, out_img, steps)


def _record(card: Card, recipe: Recipe, raw_grid: dict, out_img: sitk.Image, steps: dict) -> dict:
    return {"version": RECORD_VERSION, "dataset": card.name, "recipe": recipe.kind,
            "raw": raw_grid, "output": grid_of(out_img), "steps": steps}


def preprocess_scan(image: sitk.Image, label: sitk.Image | None, card: Card
                    ) -> tuple[sitk.Image, sitk.Image | None, dict]:
    """Preprocess one scan (and its label, card class indices, or None) by the card's recipe."""
    recipe = recipe_of(card)
    fn = preprocess_ct if recipe.kind == "ct" else preprocess_mr
    return fn(image, label, card, recipe)


def preprocess_image(image: sitk.Image, card: Card) -> tuple[sitk.Image, dict]:
    """A user's own scan in the training geometry of ``card``, and its record (for
    ``data.geometry.restore_to_raw``)."""
    out, _, record = preprocess_scan(image, None, card)
    return out, record
