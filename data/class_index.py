"""Class-slice index ``classmap_<MIN_TP>.json``: ``{label name: {scan id: [slice indices]}}``
(docs/method.md, 'Class-slice index'), by the original rule so that the published index files
are reproduced.

Class ``c`` (background included) is listed for slice ``z`` when ``c`` occurs in slice ``z`` AND
the sum of the label VALUES over slice ``z`` is at least ``MIN_TP``. Consequences: the background
is listed only for slices holding some foreground, and for ``MIN_TP > 1`` the threshold applies
to that sum of label values, not to the voxel count of ``c``. Every label name and every scan id
appear as keys (an organ a scan lacks has an empty list).

``python -m data.class_index --dataset NAME --data-dir DIR [--min-tp 1 100]``
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from data.cards import Card, load_card, scan_ids_in
from data.cli import new_parser, run_command
from util.io import atomic_write_json, read_zyx
from util.log import setup_logging

__all__ = ["class_slices", "build_classmaps", "write_class_index", "main", "DEFAULT_MIN_TP"]

log = logging.getLogger(__name__)

DEFAULT_MIN_TP = (1, 100)   # classmap_1 (always required) and classmap_100 (min_fg_data default)


def class_slices(label_zyx: np.ndarray, n_classes: int, min_tp: float) -> list[list[int]]:
    """For each class 0..n_classes-1 the slices listing it (rule of the module docstring).

    Args:
        label_zyx: Z x H x W label values.
    """
    out: list[list[int]] = [[] for _ in range(n_classes)]
    flat = label_zyx.reshape(label_zyx.shape[0], -1)
    sums = flat.sum(axis=1, dtype=np.float64)
    for z in range(flat.shape[0]):
        if sums[z] < min_tp:
            continue
        for c in np.unique(flat[z]):
            c = int(c)
            if 0 <= c < n_classes:
                out[c].append(z)
    return out


def build_classmaps(card: Card, data_dir: Path, min_tps: Sequence[float], progress: bool = True
                    ) -> dict[float, dict[str, dict[str, list[int]]]]:
    """``{min_tp: classmap}`` for every scan of ``data_dir`` (each label file read once).

    Raises:
        FileNotFoundError: no scans, or a scan without its label file.
        ValueError: an unreadable label file, or values that are not classes of the card.
    """
    from tqdm import tqdm

    ids = scan_ids_in(card, data_dir)
    maps = {tp: {name: {} for name in card.labels} for tp in min_tps}
    for sid in tqdm(ids, desc=f"{card.name} class index", unit="scan", disable=not progress):
        path = data_dir / card.file("label", id=sid)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: label of scan {sid} missing (image "
                                    f"{card.file('image', id=sid)} is there)")
        label, _ = read_zyx(path)
        values = np.unique(label)
        if values.min() < 0 or values.max() >= card.n_classes or not np.all(values == np.rint(values)):
            raise ValueError(f"{path}: label values {values[:10].tolist()} are not classes of "
                             f"dataset {card.name} (0..{card.n_classes - 1})")
        for tp in min_tps:
            for c, zs in enumerate(class_slices(label, card.n_classes, tp)):
                maps[tp][card.labels[c]][str(sid)] = zs
    return maps


def write_class_index(dataset: str, data_dir: Path, min_tps: Sequence[int] = DEFAULT_MIN_TP, *,
                      overwrite: bool = False, progress: bool = True) -> tuple[int, int, float]:
    """Write ``classmap_<min_tp>.json`` for each threshold; returns (written, skipped, seconds)."""
    start = time.time()
    card = load_card(dataset)
    data_dir = Path(data_dir)
    targets = {tp: data_dir / card.file("classmap", min_tp=int(tp)) for tp in min_tps}
    todo = [tp for tp, path in targets.items() if overwrite or not path.is_file()]
    if todo:
        maps = build_classmaps(card, data_dir, todo, progress)
        for tp in todo:
            atomic_write_json(maps[tp], targets[tp])
    return len(todo), len(targets) - len(todo), time.time() - start


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = new_parser("python -m data.class_index", __doc__)
    p.add_argument("--dataset", required=True, help="dataset card name (listed below), e.g. CHAOST2")
    p.add_argument("--data-dir", type=Path, required=True, help="folder of the preprocessed scans")
    p.add_argument("--min-tp", type=int, nargs="+", default=list(DEFAULT_MIN_TP),
                   help="thresholds on the slice's sum of label values (default: 1 100)")
    p.add_argument("--overwrite", action="store_true", help="rewrite existing index files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    written, skipped, seconds = write_class_index(args.dataset, args.data_dir, args.min_tp,
                                                  overwrite=args.overwrite,
                                                  progress=not args.no_progress)
    print(f"class_index: {written} index file(s) written, {skipped} skipped (already there; "
          f"--overwrite redoes them) in {seconds:.1f} s -> {args.data_dir}")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_command(main))
