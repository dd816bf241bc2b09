"""A tiny preprocessed dataset for tests: the files ``data.prepare`` + ``data.pseudolabels`` +
``data.class_index`` write (image, label, superpixels, body mask, class maps), for any card,
small enough for end-to-end runs on 2 CPU cores.

Every scan is ``hw x hw x depth`` (H x W x Z). The body is a disc (intensity ``BODY_VALUE``
+ 20 x (id mod 4) plus noise, 0 outside); organs are squares of known class, size and slices (``ORGANS``);
superpixels are ``block x block`` tiles numbered 1.. inside the body (0 outside), so the truth
of every file is known in closed form.

Usage::

    tiny = build_tiny_dataset(tmp_path / "CHAOST2", "CHAOST2")
    tiny.data_dir, tiny.scan_ids, tiny.label(sid), tiny.superpix(sid)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from data.cards import Card, load_card

__all__ = ["TinyData", "build_tiny_dataset", "write_hwz", "ORGANS", "BODY_VALUE"]

BODY_VALUE = 100.0
ORGAN_VALUES = (0.0, 200.0, 300.0, 350.0, 250.0, 150.0, 320.0)  # per class (cycled)
# class -> (row0, col0, size as a fraction of hw, slices where present: 'most' (all but the last),
# 'upper' (first half), 'lower' (second half)); the last slice never holds 1, 2, 3 or 6, so every
# setting-2 exclusion leaves training slices
ORGANS = {
    1: (0.20, 0.15, 0.30, "most"),    # large, every slice but the last (liver / spleen in CT)
    2: (0.55, 0.20, 0.16, "upper"),   # small, upper half of the slices
    3: (0.55, 0.62, 0.16, "upper"),
    4: (0.20, 0.60, 0.22, "lower"),
    6: (0.70, 0.42, 0.12, "most"),    # CT only (SABS liver)
}
MIN_TPS = (1, 100)                    # class maps written (SPEC §8 "class index files")


@dataclasses.dataclass
class TinyData:
    data_dir: Path
    card: Card
    scan_ids: list[int]
    hw: int
    depth: int
    block: int

    def read(self, kind: str, sid: int, **fields) -> np.ndarray:
        """A file of the dataset as H x W x Z."""
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(self.data_dir / self.card.file(kind, id=sid, **fields))))
        return arr.transpose(1, 2, 0)

    def label(self, sid: int) -> np.ndarray:
        return self.read("label", sid)

    def superpix(self, sid: int, scale: str = "MIDDLE") -> np.ndarray:
        return self.read("superpix", sid, scale=scale)


def write_hwz(arr_hwz: np.ndarray, path: Path, spacing=(1.25, 1.25, 7.7)) -> None:
    """Write an H x W x Z array as NIfTI (SimpleITK order Z x H x W)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_hwz.transpose(2, 0, 1)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def _present(where: str, z: int, depth: int) -> bool:
    if where == "most":
        return z < depth - 1
    return z < (depth + 1) // 2 if where == "upper" else z >= depth // 2


def build_tiny_dataset(out: str | Path, card_name: str = "CHAOST2", *, n_scans: int | None = None,
                       hw: int = 64, depth: int = 4, block: int = 16, seed: int = 0,
                       scales: tuple[str, ...] = ("MIDDLE",)) -> TinyData:
    """Write a tiny preprocessed dataset for ``card_name`` into ``out``.

    Args:
        n_scans: default the card's last fold separator (every fold non-empty).
        hw, depth: slice size and slices per scan; block: superpixel tile size.
    """
    card = load_card(card_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if n_scans is None:
        n_scans = card.fold_separators[-1] if card.fold_separators else 10
    rng = np.random.default_rng(seed)
    ids = list(range(1, n_scans + 1)) if card.modality == "MR" else list(range(n_scans))
    classes = [c for c in ORGANS if c < card.n_classes and c in card.pa_all]
    rows, cols = np.meshgrid(np.arange(hw), np.arange(hw), indexing="ij")
    body = (rows - hw / 2 + 0.5) ** 2 + (cols - hw / 2 + 0.5) ** 2 <= (0.48 * hw) ** 2
    tiles = (rows // block) * ((hw + block - 1) // block) + cols // block + 1
    classmaps: dict[int, dict[str, dict[str, list[int]]]] = {
        tp: {name: {} for name in card.labels} for tp in MIN_TPS}
    for sid in ids:
        label = np.zeros((hw, hw, depth), np.int16)
        for c in classes:
            r0, c0, frac, where = ORGANS[c]
            size = max(int(round(frac * hw)), 2)
            r, q = int(r0 * hw), int(c0 * hw)
            for z in range(depth):
                if _present(where, z, depth):
                    label[r:r + size, q:q + size, z] = c
        image = (np.where(body[..., None], BODY_VALUE + 20.0 * (sid % 4), 0.0)
                 + rng.normal(0, 5.0, (hw, hw, depth)))
        for c in classes:
            image[label == c] = ORGAN_VALUES[c % len(ORGAN_VALUES)] + 10.0 * (sid % 3)
        superpix = np.where(body[..., None], tiles[..., None], 0).repeat(depth, axis=2).astype(np.int32)
        write_hwz(image.astype(np.float64), out / card.file("image", id=sid))
        write_hwz(label, out / card.file("label", id=sid))
        write_hwz(body[..., None].repeat(depth, axis=2).astype(np.uint8), out / card.file("fgmask", id=sid))
        for scale in scales:
            write_hwz(superpix, out / card.file("superpix", id=sid, scale=scale))
        for tp in MIN_TPS:
            for c, name in enumerate(card.labels):
                zs = [z for z in range(depth) if int((label[..., z] == c).sum()) >= tp]
                classmaps[tp][name][str(sid)] = zs
    for tp in MIN_TPS:
        (out / card.file("classmap", min_tp=tp)).write_text(json.dumps(classmaps[tp]), encoding="utf-8")
    return TinyData(out, card, ids, hw, depth, block)
