"""Cardiac MR (MS-CMRSeg 2019, bSSFP ``C0``) -> ``image_<id>.nii.gz``, ``label_<id>.nii.gz`` and
``record_<id>.json`` (card ``C0``; the paper's cardiac task, never released by the original).

``python -m data.cmr_c0 --raw DIR --out OUT``; DIR (searched recursively) holds
``patientN_C0.nii.gz`` and ``patientN_C0_manual.nii.gz``; the output id is N. Images without a
manual label (the challenge's unlabelled cases) are skipped with a warning.

Choices (documented in ``data/datasets/C0.json5`` and docs/method.md, 'Preprocessing'):
- labels: 0 BG, 1 LV-BP (500), 2 LV-MYO (200), 3 RV (600), the paper's order;
- array orientation as stored (short-axis slices; no reorientation);
- intensities clipped above the 99.5th percentile (as CHAOS) and rescaled to 0..255 by the
  volume's minimum and clip value, so one body-mask threshold fits every scanner;
- in-plane spacing 1.25 x 1.25 mm (as CHAOS, so the networks see the same pixel size), the
  short-axis slices kept as they are (several mm apart and few: resampling across them would
  only blur and invent slices), centre crop/pad to 256 x 256 (320 mm: the heart sits near the
  centre of a cardiac field of view).
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

__all__ = ["convert", "find_cases", "main", "DATASET", "C0_LABEL_VALUES"]

log = logging.getLogger(__name__)

DATASET = "C0"
C0_LABEL_VALUES = {0: 0, 500: 1, 200: 2, 600: 3}   # MS-CMRSeg value -> card label
IMG_RE = re.compile(r"^patient(\d+)_C0\.nii(\.gz)?$")
LABEL_RE = re.compile(r"^patient(\d+)_C0_manual\.nii(\.gz)?$")


def _numbered(raw: Path, rx: re.Pattern[str], problems: Problems) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for p in sorted(raw.rglob("patient*")):
        m = rx.match(p.name)
        if not m:
            continue
        num = int(m.group(1))
        if num in found:
            problems.bad(f"{p}: patient {num} also at {found[num]}")
        found[num] = p
    return found


def find_cases(raw: Path) -> list[RawCase]:
    """Every labelled C0 scan under ``raw``, pre-flight checked.

    Raises:
        FileNotFoundError: ``raw`` missing, no labelled scan, or a label without its image.
        ValueError: unreadable headers, duplicates, image/label shape or geometry mismatch.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw}: no such folder (MS-CMRSeg C0 download)")
    problems = Problems()
    images = _numbered(raw, IMG_RE, problems)
    labels = _numbered(raw, LABEL_RE, problems)
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        log.warning("skipping %d C0 image(s) without a manual label: patients %s",
                    len(unlabelled), unlabelled)
    for num in sorted(set(labels) - set(images)):
        problems.missing_file(f"{labels[num]}: no patient{num}_C0.nii.gz beside it")
    pairs = sorted(set(images) & set(labels))
    if not pairs:
        problems.missing_file(f"{raw}: no patientN_C0.nii.gz with patientN_C0_manual.nii.gz")
    for num in pairs:
        check_nifti_pair(images[num], labels[num], problems)
    problems.raise_if_any(f"C0 raw data {raw}")
    return [RawCase(num, images[num], labels[num],
                    functools.partial(load_nifti_pair, images[num], labels[num], C0_LABEL_VALUES))
            for num in pairs]


def convert(raw: Path, out: Path, *, overwrite: bool = False, progress: bool = True,
            dataset: str = DATASET) -> Summary:
    """Convert every labelled C0 scan of ``raw`` into ``out`` (see module docstring)."""
    card = load_card(dataset)
    return convert_cases(card, find_cases(raw), Path(out), overwrite=overwrite, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    return converter_main("cmr_c0", __doc__, convert, argv, dataset=DATASET)


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_command(main))
