"""All data steps in one go: conversion of the raw download, class-slice index, superpixel
pseudolabels (docs/data.md, 'Prepare').

``python -m data.prepare --dataset NAME --raw DIR --out OUT [--jobs N]``

The card's ``raw_format`` picks the converter (``chaos_mr``, ``synapse_ct``, ``cmr_c0``). Without
``--raw`` the conversion is skipped: the index and the pseudolabels are made for scans already in
OUT (a user's own dataset converted by other means). Finished outputs are skipped unless
``--overwrite``.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from data.cards import Card, load_card, scan_ids_in
from data.class_index import DEFAULT_MIN_TP, write_class_index
from data.cli import new_parser, run_command
from data.pseudolabels import DEFAULT_SCALE, make_pseudolabels, pending_scans
from util.io import verify_image_files
from util.log import setup_logging

__all__ = ["prepare", "PrepareSummary", "main", "CONVERTERS"]

log = logging.getLogger(__name__)

CONVERTERS = ("chaos_mr", "synapse_ct", "cmr_c0")    # modules of data/ with convert()


@dataclasses.dataclass
class PrepareSummary:
    converted: int = 0
    skipped: int = 0
    index_files: int = 0
    pseudolabelled: int = 0
    seconds: float = 0.0

    def line(self, dataset: str, out: Path) -> str:
        return (f"prepare {dataset}: {self.converted} scan(s) converted, {self.skipped} already "
                f"there, {self.index_files} index file(s), {self.pseudolabelled} scan(s) "
                f"pseudolabelled in {self.seconds:.1f} s -> {out}")


def prepare(dataset: str, raw: Path | None, out: Path, *, scale: str = DEFAULT_SCALE,
            min_tps: Sequence[int] = DEFAULT_MIN_TP, jobs: int | None = None,
            overwrite: bool = False, progress: bool = True) -> PrepareSummary:
    """Convert ``raw`` (unless None), then write the class index and the pseudolabels in ``out``.

    Raises:
        ValueError: unknown dataset, or a card without a usable ``raw_format`` when ``raw`` is given.
        FileNotFoundError / ValueError: from the steps (missing or bad input, named).
        CorruptImageError: a truncated or corrupt scan (named), before the index or the
            pseudolabels write anything.
    """
    start = time.time()
    card = load_card(dataset)
    out = Path(out)
    summary = PrepareSummary()
    if raw is not None:
        fmt = card.extra.get("raw_format")
        if fmt not in CONVERTERS:
            raise ValueError(f"dataset card {card.path}: 'raw_format' must be one of "
                             f"{', '.join(CONVERTERS)} to convert {raw} (got {fmt!r}); or convert "
                             f"the scans yourself into {card.files['image']}/{card.files['label']} "
                             f"and run without --raw")
        converter = importlib.import_module(f"data.{fmt}")
        conv = converter.convert(Path(raw), out, overwrite=overwrite, progress=progress,
                                 dataset=card.name)
        summary.converted, summary.skipped = conv.written, conv.skipped
    check_inputs(card, out, scale, min_tps, overwrite=overwrite)
    summary.index_files, _, _ = write_class_index(card.name, out, min_tps, overwrite=overwrite,
                                                  progress=progress)
    pseudo = make_pseudolabels(card.name, out, scale, jobs=jobs, overwrite=overwrite,
                               progress=progress)
    summary.pseudolabelled = pseudo.written
    summary.seconds = time.time() - start
    return summary


def check_inputs(card: Card, out: Path, scale: str, min_tps: Sequence[int], *,
                 overwrite: bool = False) -> None:
    """Pre-flight: every label the class index will read and every image still to be
    pseudolabelled is complete, before either step writes anything (each file is decompressed
    once; the steps' own reads reuse the check).

    Raises:
        CorruptImageError: truncated or corrupt files, all named.
    """
    ids = scan_ids_in(card, out)
    inputs: list[Path] = []
    if overwrite or not all((out / card.file("classmap", min_tp=int(tp))).is_file() for tp in min_tps):
        labels = [out / card.file("label", id=sid) for sid in ids]
        inputs += [p for p in labels if p.is_file()]      # a missing label: class_index names it
    inputs += [out / card.file("image", id=sid)
               for sid in pending_scans(card, out, scale, ids, overwrite=overwrite)]
    verify_image_files(inputs, f"prepare {card.name}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = new_parser("python -m data.prepare", __doc__)
    p.add_argument("--dataset", required=True, help="dataset card name (listed below), e.g. CHAOST2")
    p.add_argument("--raw", type=Path, default=None, help="the raw download (omit: skip conversion)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the card's data_dir)")
    p.add_argument("--scale", default=DEFAULT_SCALE, help="superpixel scale of the card")
    p.add_argument("--min-tp", type=int, nargs="+", default=list(DEFAULT_MIN_TP),
                   help="class index thresholds (default: 1 100)")
    p.add_argument("--jobs", type=int, default=None, help="processes for the pseudolabels (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out if args.out is not None else Path(load_card(args.dataset).data_dir)
    summary = prepare(args.dataset, args.raw, out, scale=args.scale, min_tps=args.min_tp,
                      jobs=args.jobs, overwrite=args.overwrite, progress=not args.no_progress)
    print(summary.line(args.dataset, out))
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_command(main))
