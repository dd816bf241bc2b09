"""Synapse multi-atlas abdomen CT -> ``image_<id>.nii.gz``, ``label_<id>.nii.gz`` and
``record_<id>.json`` (docs/method.md, 'Preprocessing'; card ``SABS``).

``python -m data.synapse_ct --raw DIR --out OUT``; DIR holds ``img/img00NN.nii.gz`` and
``label/label00NN.nii.gz`` (or is/holds ``RawData/Training``). Scans are re-indexed 0..N-1 in
sorted order of NN (the record keeps the source files). Each scan: HU window [-125, 275], its own
min-max to 0..255, 32 voxels cut from each in-plane border, in-plane spacing x 448/256, z as it
is (``data/preprocess.py``, recipe ``ct``). Label values must be 0..13 (the card's classes).
"""
from __future__ import annotations

import functools
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

from data.cards import load_card
from data.cli import run_command
from data.convert import Problems, RawCase, Summary, check_nifti_pair, convert_cases, converter_main, load_nifti_pair
from util.log import setup_logging

__all__ = ["convert", "find_cases", "main", "DATASET"]

log = logging.getLogger(__name__)

DATASET = "SABS"
IMG_RE = re.compile(r"^img(\d+)\.nii(\.gz)?$")
LABEL_RE = re.compile(r"^label(\d+)\.nii(\.gz)?$")


def _root(raw: Path) -> Path:
    candidates = [raw, raw / "Training", raw / "RawData" / "Training"]
    for cand in candidates:
        if (cand / "img").is_dir():
            return cand
    raise FileNotFoundError(f"no Synapse img/ folder under {raw}: looked in "
                            + ", ".join(str(c) for c in candidates))


def _numbered(folder: Path, rx: re.Pattern[str]) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): p for p in sorted(folder.iterdir()) if (m := rx.match(p.name))}


def find_cases(raw: Path, n_classes: int) -> list[RawCase]:
    """Every Synapse image with its label, pre-flight checked, re-indexed 0..N-1.

    Raises:
        FileNotFoundError: no img/ folder, no scans, or an image without its label and vice versa.
        ValueError: unreadable headers or image/label of different shape or geometry.
    """
    root = _root(Path(raw))
    images = _numbered(root / "img", IMG_RE)
    labels = _numbered(root / "label", LABEL_RE)
    problems = Problems()
    if not images:
        problems.missing_file(f"{root / 'img'}: no imgNNNN.nii.gz files")
    for num in sorted(set(images) - set(labels)):
        problems.missing_file(f"{images[num]}: no label{num:04d}.nii.gz in {root / 'label'}")
    for num in sorted(set(labels) - set(images)):
        problems.missing_file(f"{labels[num]}: no img{num:04d}.nii.gz in {root / 'img'}")
    pairs = sorted(set(images) & set(labels))
    for num in pairs:
        check_nifti_pair(images[num], labels[num], problems)
    problems.raise_if_any(f"Synapse raw data {root}")
    values = {v: v for v in range(n_classes)}
    return [RawCase(new_id, images[num], labels[num],
                    functools.partial(load_nifti_pair, images[num], labels[num], values))
            for new_id, num in enumerate(pairs)]


def convert(raw: Path, out: Path, *, overwrite: bool = False, progress: bool = True,
            dataset: str = DATASET) -> Summary:
    """Convert every Synapse CT scan of ``raw`` into ``out`` (see module docstring)."""
    card = load_card(dataset)
    return convert_cases(card, find_cases(raw, card.n_classes), Path(out), overwrite=overwrite,
                         progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    return converter_main("synapse_ct", __doc__, convert, argv, dataset=DATASET)


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_command(main))
