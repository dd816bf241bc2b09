"""Superpixel pseudolabels ``superpix-<SCALE>_<id>.nii.gz`` and body masks ``fgmask_<id>.nii.gz``
for every scan of a dataset (docs/method.md, 'Superpixel pseudolabels'), in parallel over scans.

Per axial slice of the preprocessed image:
1. Felzenszwalb graph segmentation (scikit-image) on the slice's raw values with the card's
   parameters for SCALE (``MIDDLE``: scale 1, sigma 1, min_size 400).
2. Body mask: voxels strictly above the card's ``body_mask_threshold``, the largest
   8-connected component, holes filled; a slice with nothing above the threshold stays empty.
3. Ids as the published files have them: with M the slice's largest Felzenszwalb id, ids
   1..M-1 keep their value, M becomes M + 1, id 0 becomes 0; then everything outside the body
   mask becomes 0 (ids are not contiguous; M never occurs).

``python -m data.pseudolabels --dataset NAME --data-dir DIR [--scale MIDDLE] [--jobs N]``
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import logging
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.segmentation import felzenszwalb

from data.cards import Card, load_card, scan_ids_in
from data.cli import new_parser, run_command
from util.io import atomic_write_sitk, read_zyx, verify_image_files
from util.log import setup_logging
from util.machine import usable_cpus

__all__ = ["body_mask", "superpixel_ids", "pseudolabels_of", "make_pseudolabels", "pending_scans",
           "PseudoSummary", "default_jobs", "largest_first", "main", "DEFAULT_SCALE"]

log = logging.getLogger(__name__)

DEFAULT_SCALE = "MIDDLE"   # the paper's default superpixel scale


def body_mask(slice_hw: np.ndarray, threshold: float) -> np.ndarray:
    """Body mask (docs/method.md, 'Superpixel pseudolabels', step 2): ``> threshold``, largest
    8-connected component, holes filled (bool H x W)."""
    above = slice_hw > threshold
    if not above.any():
        return above
    comps = connected_components(above)          # default connectivity: 8 in 2-D
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(comps == int(np.argmax(sizes)))


def superpixel_ids(segments_hw: np.ndarray, mask_hw: np.ndarray) -> np.ndarray:
    """The id rule (docs/method.md, 'Superpixel pseudolabels', step 3) on one slice's
    Felzenszwalb ids (0..M): int32 H x W."""
    out = segments_hw.astype(np.int32, copy=True)
    top = int(out.max())
    if top > 0:
        out[segments_hw == top] = top + 1
    out[~mask_hw] = 0          # id 0 is already 0
    return out


def pseudolabels_of(image_zyx: np.ndarray, params: dict[str, float], threshold: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Superpixels (int32) and body mask (uint8) of a Z x H x W volume, slice by slice."""
    superpix = np.zeros(image_zyx.shape, np.int32)
    fgmask = np.zeros(image_zyx.shape, np.uint8)
    for z in range(image_zyx.shape[0]):
        sl = np.ascontiguousarray(image_zyx[z], dtype=np.float64)
        seg = felzenszwalb(sl, scale=float(params["scale"]), sigma=float(params["sigma"]),
                           min_size=int(params["min_size"]), channel_axis=None)
        mask = body_mask(sl, threshold)
        superpix[z] = superpixel_ids(seg, mask)
        fgmask[z] = mask
    return superpix, fgmask


@dataclasses.dataclass
class PseudoSummary:
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    scan_seconds: dict[int, float] = dataclasses.field(default_factory=dict)

    def line(self, out: Path) -> str:
        return (f"pseudolabels: {self.written} scan(s) written, {self.skipped} skipped (already "
                f"done; --overwrite redoes them) in {self.seconds:.1f} s -> {out}")


def _one_scan(card: Card, data_dir: Path, sid: int, scale: str) -> tuple[int, float]:
    start = time.time()
    image_path = data_dir / card.file("image", id=sid)
    image, geometry = read_zyx(image_path, np.float64)
    superpix, fgmask = pseudolabels_of(image, card.superpixel[scale], card.body_mask_threshold)
    for arr, kind, fields in ((superpix, "superpix", {"scale": scale}), (fgmask, "fgmask", {})):
        out = sitk.GetImageFromArray(arr.astype(np.float32))
        out.CopyInformation(geometry)
        atomic_write_sitk(out, data_dir / card.file(kind, id=sid, **fields))
    return sid, time.time() - start


def _start_method() -> str:
    """``fork`` where the platform has it (no re-import of the caller's ``__main__``, so it works
    from notebooks and piped scripts, and workers start at once; the workers only use NumPy,
    scikit-image and SimpleITK), else ``spawn``."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def default_jobs() -> int:
    """All cores this process may use."""
    return usable_cpus()


def pending_scans(card: Card, data_dir: Path, scale: str, ids: Sequence[int], *,
                  overwrite: bool = False) -> list[int]:
    """The scans of ``ids`` whose superpixels or body mask are still to be written."""
    return [sid for sid in ids if overwrite or not all(
        (Path(data_dir) / card.file(k, id=sid, scale=scale)).is_file() for k in ("superpix", "fgmask"))]


def largest_first(card: Card, data_dir: Path, ids: Sequence[int]) -> list[int]:
    """Scan ids by decreasing image file size: the pool takes the longest scans first, so the
    last scans to finish are short ones and no worker idles at the end waiting for a long one
    (a scan's time grows with its number of slices, as its file size does)."""
    return sorted(ids, key=lambda sid: -(data_dir / card.file("image", id=sid)).stat().st_size)


def make_pseudolabels(dataset: str, data_dir: Path, scale: str = DEFAULT_SCALE, *,
                      jobs: int | None = None, overwrite: bool = False, progress: bool = True,
                      scan_ids: Sequence[int] | None = None) -> PseudoSummary:
    """Write superpixels and body masks of every scan in ``data_dir`` (``jobs`` processes).

    Raises:
        FileNotFoundError: ``data_dir`` missing or without scans of the card's pattern.
        ValueError: unknown scale (lists the card's scales) or an unreadable image.
        CorruptImageError: truncated or corrupt images, all named, before anything is written.
    """
    from tqdm import tqdm

    start = time.time()
    card = load_card(dataset)
    data_dir = Path(data_dir)
    if scale not in card.superpixel:
        raise ValueError(f"superpixel scale {scale!r} is not in dataset card {card.path} "
                         f"(scales: {', '.join(card.superpixel)})")
    ids = list(scan_ids) if scan_ids is not None else scan_ids_in(card, data_dir)
    summary = PseudoSummary()
    todo = pending_scans(card, data_dir, scale, ids, overwrite=overwrite)
    summary.skipped = len(ids) - len(todo)
    # pre-flight: a truncated or corrupt image stops the command before anything is written
    verify_image_files([data_dir / card.file("image", id=sid) for sid in todo], "pseudolabels")
    jobs = max(1, min(jobs or default_jobs(), len(todo) or 1))
    bar = tqdm(total=len(todo), desc=f"{card.name} superpixels", unit="scan", disable=not progress)
    if jobs == 1:
        for sid in todo:
            sid, seconds = _one_scan(card, data_dir, sid, scale)
            summary.scan_seconds[sid] = seconds
            bar.update()
    else:
        ctx = multiprocessing.get_context(_start_method())
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_one_scan, card, data_dir, sid, scale)
                       for sid in largest_first(card, data_dir, todo)]
            for fut in cf.as_completed(futures):
                sid, seconds = fut.result()
                summary.scan_seconds[sid] = seconds
                bar.update()
    bar.close()
    summary.written = len(todo)
    summary.seconds = time.time() - start
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = new_parser("python -m data.pseudolabels", __doc__)
    p.add_argument("--dataset", required=True, help="dataset card name (listed below), e.g. CHAOST2")
    p.add_argument("--data-dir", type=Path, required=True, help="folder of the preprocessed scans")
    p.add_argument("--scale", default=DEFAULT_SCALE, help="superpixel scale of the card")
    p.add_argument("--jobs", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="redo finished scans")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    summary = make_pseudolabels(args.dataset, args.data_dir, args.scale, jobs=args.jobs,
                                overwrite=args.overwrite, progress=not args.no_progress)
    print(summary.line(args.data_dir))
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_command(main))
