"""NIfTI reading at the I/O boundary: SimpleITK (z, y, x) arrays become H x W x Z volumes.

H is the array's y axis (rows), W its x axis (columns), Z the slice axis, as the original
loaders have them (``GetArrayFromImage(img).transpose(1, 2, 0)``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["read_image", "read_zyx", "read_hwz", "spacing_zyx", "write_like"]


def read_image(path: str | Path) -> sitk.Image:
    """Read a NIfTI (or any SimpleITK-readable) file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read as an image (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path}: not a readable image ({str(err).strip().splitlines()[-1]})") from err


def read_zyx(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, sitk.Image]:
    """Array in SimpleITK order Z x H x W, and the image (for its geometry)."""
    img = read_image(path)
    arr = sitk.GetArrayFromImage(img)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr, img


def read_hwz(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, sitk.Image]:
    """Array as H x W x Z (the loaders' order), and the image (for its geometry)."""
    arr, img = read_zyx(path, dtype)
    return np.ascontiguousarray(arr.transpose(1, 2, 0)), img


def spacing_zyx(img: sitk.Image) -> tuple[float, float, float]:
    """Voxel spacing in mm in array axis order (z, y, x); SimpleITK reports (x, y, z)."""
    sx, sy, sz = img.GetSpacing()[:3]
    return float(sz), float(sy), float(sx)


def write_like(arr_zyx: np.ndarray, reference: sitk.Image, target: str | Path) -> Path:
    """Write a Z x H x W array with the geometry of ``reference``, atomically."""
    from util.io import atomic_write_sitk

    out = sitk.GetImageFromArray(arr_zyx)
    out.CopyInformation(reference)
    return atomic_write_sitk(out, target)
