"""Loading preprocessed scans of a dataset card: images normalised as the card says, labels,
superpixels and body masks, all as H x W x Z arrays cut to the first 256 x 256
(docs/method.md, 'Training episodes').
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from data.cards import Card
from dataloaders.niftiio import read_hwz

__all__ = ["Scan", "NormStats", "load_scan", "fold_norm_stats", "normalise", "load_classmap",
           "require_file", "CUT_HW"]

log = logging.getLogger(__name__)

CUT_HW = (256, 256)     # volumes are cut to the first 256 x 256


@dataclasses.dataclass(frozen=True)
class NormStats:
    """CT fold-global intensity statistics (None for per-volume MR z-scoring)."""
    mean: float
    std: float


@dataclasses.dataclass
class Scan:
    """One preprocessed scan; every array is H x W x Z."""
    scan_id: int
    image: np.ndarray                  # float32, normalised
    geometry: sitk.Image               # the image file as read (origin, spacing, direction)
    label: np.ndarray | None = None    # int16, class indices of the card
    superpix: np.ndarray | None = None  # int32 superpixel ids (0 = none)
    fgmask: np.ndarray | None = None   # uint8 body mask

    @property
    def n_slices(self) -> int:
        return self.image.shape[2]


def require_file(path: Path, how: str) -> Path:
    """``path`` if it exists, else FileNotFoundError naming it and the command that makes it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {how}")
    return path


def _prepare_hint(card: Card, data_dir: Path) -> str:
    return f"create it with `python -m data.prepare --dataset {card.name} --raw RAW_DIR --out {data_dir}`"


def fold_norm_stats(card: Card, data_dir: str | Path, scan_ids: Sequence[int]) -> NormStats | None:
    """Card normalisation ``fold_global``: one mean/std over all voxels of ``scan_ids`` (the
    training fold; validation reuses them). ``per_volume_zscore``: None."""
    if card.normalisation != "fold_global":
        return None
    data_dir = Path(data_dir)
    total = 0.0
    total_sq = 0.0
    count = 0
    for sid in scan_ids:
        path = require_file(data_dir / card.file("image", id=sid), _prepare_hint(card, data_dir))
        vol, _ = read_hwz(path, np.float64)
        vol = vol[: CUT_HW[0], : CUT_HW[1]]
        total += float(vol.sum())
        total_sq += float(np.square(vol).sum())
        count += vol.size
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    return NormStats(mean, std)


def normalise(card: Card, vol: np.ndarray, stats: NormStats | None) -> np.ndarray:
    """MR: ``(x - mean) / std`` of the volume itself; CT: with the fold-global ``stats``."""
    vol = vol.astype(np.float64, copy=False)
    if card.normalisation == "per_volume_zscore":
        out = (vol - vol.mean()) / vol.std()
    else:
        if stats is None:
            raise ValueError(f"dataset {card.name} normalises with fold-global statistics: "
                             "pass the training fold's NormStats")
        out = (vol - stats.mean) / stats.std
    return out.astype(np.float32)


def load_scan(card: Card, data_dir: str | Path, scan_id: int, *, stats: NormStats | None = None,
              label: bool = False, superpix_scale: str | None = None, fgmask: bool = False) -> Scan:
    """Read one preprocessed scan and whichever companions are asked for.

    Raises:
        FileNotFoundError: a missing file; the message names it and the command that creates it.
        ValueError: an unreadable file, or companions whose shape differs from the image's.
    """
    data_dir = Path(data_dir)
    img_path = require_file(data_dir / card.file("image", id=scan_id), _prepare_hint(card, data_dir))
    vol, geometry = read_hwz(img_path, np.float64)
    h, w = CUT_HW
    scan = Scan(scan_id, normalise(card, vol[:h, :w], stats), geometry)

    def companion(kind: str, dtype: type, hint: str, **fields) -> np.ndarray:
        path = require_file(data_dir / card.file(kind, id=scan_id, **fields), hint)
        arr, _ = read_hwz(path)
        if arr.shape != vol.shape:
            raise ValueError(f"{path}: shape {arr.shape} (H x W x Z) differs from {img_path.name} "
                             f"{vol.shape}")
        return np.rint(arr[:h, :w]).astype(dtype) if arr.dtype.kind == "f" else arr[:h, :w].astype(dtype)

    pseudo_hint = (f"create it with `python -m data.pseudolabels --dataset {card.name} "
                   f"--data-dir {data_dir} --scale {superpix_scale or 'MIDDLE'}`")
    if label:
        scan.label = companion("label", np.int16, _prepare_hint(card, data_dir))
    if superpix_scale is not None:
        scan.superpix = companion("superpix", np.int32, pseudo_hint, scale=superpix_scale)
    if fgmask:
        scan.fgmask = companion("fgmask", np.uint8, pseudo_hint)
    return scan


def load_classmap(card: Card, data_dir: str | Path, min_tp: int | str = 1) -> dict[str, dict[str, list[int]]]:
    """``classmap_<min_tp>.json``: ``{label name: {scan id: [slice indices]}}``.

    Raises:
        FileNotFoundError: naming the file and the ``python -m data.class_index`` line.
        ValueError: a file that is not valid JSON.
    """
    data_dir = Path(data_dir)
    path = require_file(
        data_dir / card.file("classmap", min_tp=int(min_tp)),
        f"create it with `python -m data.class_index --dataset {card.name} --data-dir {data_dir} "
        f"--min-tp {int(min_tp)}`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
