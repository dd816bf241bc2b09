"""Atomic file writes: every output goes to a temporary name in its target folder, then
``os.replace`` puts it in place, so an interrupted run never leaves a half-written file.

The temporary name keeps the real suffix (``.<stem>.tmp<pid>.nii.gz``) because SimpleITK and
nibabel choose their writer from it.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_json", "atomic_save_torch", "atomic_write_sitk",
           "atomic_write_text", "full_suffix"]


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``a.nii.gz``, ``.pth`` for ``5.pth``, ``''`` without a suffix."""
    name = path.name
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and the exception propagates.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(target)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    tmp = target.parent / f".{stem}.tmp{os.getpid()}{suffix}"
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(text: str, target: str | os.PathLike) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_write_json(obj: Any, target: str | os.PathLike, *, indent: int | None = None) -> Path:
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=indent)
    return Path(target)


def atomic_save_torch(obj: Any, target: str | os.PathLike) -> Path:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
    return Path(target)


def atomic_write_sitk(image: Any, target: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (``.nii.gz`` keeps its suffix on the temporary)."""
    import SimpleITK as sitk

    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return Path(target)
