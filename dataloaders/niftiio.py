"""NIfTI reading at the I/O boundary: SimpleITK (z, y, x) arrays become H x W x Z volumes.

H is the array's y axis (rows), W its x axis (columns), Z the slice axis, as the original
loaders have them (``GetArrayFromImage(img).transpose(1, 2, 0)``). Every read goes through
``util.io.read_zyx`` (the checked reads' one home), which refuses truncated or corrupt files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from util.io import atomic_write_sitk, read_zyx

__all__ = ["read_hwz", "write_like"]


def read_hwz(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, sitk.Image]:
    """Array as H x W x Z (the loaders' order), and the image (for its geometry)."""
    arr, img = read_zyx(path, dtype)
    return np.ascontiguousarray(arr.transpose(1, 2, 0)), img


def write_like(arr_zyx: np.ndarray, reference: sitk.Image, target: str | Path) -> Path:
    """Write a Z x H x W array with the geometry of ``reference``, atomically."""
    out = sitk.GetImageFromArray(arr_zyx)
    out.CopyInformation(reference)
    return atomic_write_sitk(out, target)
