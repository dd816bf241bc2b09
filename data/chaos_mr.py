"""CHAOS MR T2-SPIR: raw DICOM series and PNG ground truth -> ``image_<id>.nii.gz``,
``label_<id>.nii.gz`` and ``record_<id>.json`` (docs/method.md, 'Preprocessing'; card ``CHAOST2``).

``python -m data.chaos_mr --raw DIR --out OUT``; DIR holds ``MR/<id>/T2SPIR/{DICOM_anon,Ground}``
(or is that ``MR`` folder, or holds ``Train_Sets/MR``).

Each DICOM series is read with SimpleITK's series reader: slice positions decide the order, not
file names. Each ``Ground/<stem>.png`` belongs to the DICOM file ``<stem>.dcm`` and holds its
pixels in the same row/column order, so the label slices are stacked in the reader's file order
and given the image's geometry; the preprocessing then reorients both together (rows flipped,
as the published files have them). Grey values map by range: 55-70 liver,
110-135 right kidney, 175-200 left kidney, 240-255 spleen, 0 background; anything else is an
error naming the PNG and the value.
"""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import SimpleITK as sitk

from data.cards import load_card
from data.cli import run_command
from data.convert import Problems, RawCase, Summary, convert_cases, converter_main, read_sitk
from util.log import setup_logging

__all__ = ["convert", "find_cases", "grey_to_label", "read_series", "main", "GREY_RANGES", "DATASET"]

log = logging.getLogger(__name__)

DATASET = "CHAOST2"
GREY_RANGES = ((55, 70, 1), (110, 135, 2), (175, 200, 3), (240, 255, 4))  # docs/method.md, 'Preprocessing'
SEQUENCE = "T2SPIR"
MAX_LISTED = 5        # file names listed per problem


def _grey_lut() -> np.ndarray:
    lut = np.full(256, -1, np.int16)
    lut[0] = 0
    for lo, hi, lab in GREY_RANGES:
        lut[lo: hi + 1] = lab
    return lut


GREY_LUT = _grey_lut()


def grey_to_label(png: np.ndarray, path: Path) -> np.ndarray:
    """CHAOS grey values -> label indices (uint8).

    Raises:
        ValueError: a value outside these grey ranges (names the PNG and the values).
    """
    values = np.unique(png)
    bad = [int(v) for v in values if v > 255 or v < 0 or GREY_LUT[int(v)] < 0]
    if bad:
        raise ValueError(f"{path}: unexpected grey value(s) {bad[:MAX_LISTED]} (CHAOS labels are 0 "
                         f"and {', '.join(f'{lo}-{hi}' for lo, hi, _ in GREY_RANGES)})")
    return GREY_LUT[png].astype(np.uint8)


def _read_png(path: Path) -> np.ndarray:
    png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if png is None:
        raise ValueError(f"{path}: not a readable PNG (corrupt or wrong format)")
    if png.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label PNG, got shape {png.shape}")
    return png


def _mr_root(raw: Path) -> Path:
    candidates = [raw / "MR", raw / "Train_Sets" / "MR", raw]
    for cand in candidates:
        if cand.is_dir() and any((d / SEQUENCE).is_dir() for d in cand.iterdir() if d.is_dir()):
            return cand
    raise FileNotFoundError(
        f"no CHAOS MR cases under {raw}: looked for <id>/{SEQUENCE}/ in "
        + ", ".join(str(c) for c in candidates))


def _stems(folder: Path, suffix: str) -> dict[str, Path]:
    return {p.name[: -len(suffix)]: p for p in sorted(folder.iterdir()) if p.name.endswith(suffix)}


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def _check_case(case_dir: Path, problems: Problems) -> bool:
    """Pre-flight check of one case folder; returns whether it can be loaded."""
    dicom_dir, ground = case_dir / SEQUENCE / "DICOM_anon", case_dir / SEQUENCE / "Ground"
    ok = True
    for folder in (dicom_dir, ground):
        if not folder.is_dir():
            problems.missing_file(f"{folder}: folder missing")
            ok = False
    if not ok:
        return False
    dcm, png = _stems(dicom_dir, ".dcm"), _stems(ground, ".png")
    if not dcm:
        problems.missing_file(f"{dicom_dir}: no .dcm files")
        return False
    for stem_set, other, kind, where in ((set(png) - set(dcm), dicom_dir, "PNG", ground),
                                          (set(dcm) - set(png), ground, "DICOM file", dicom_dir)):
        if stem_set:
            counterpart = "DICOM file" if kind == "PNG" else "PNG"
            problems.bad(f"{where}: {kind}(s) without a {counterpart} of the same stem in {other}: "
                         f"{_listing(sorted(stem_set))}")
            ok = False
    for stem in sorted(set(dcm) & set(png)):
        try:
            header = read_sitk(dcm[stem], header_only=True)
            label = grey_to_label(_read_png(png[stem]), png[stem])
        except ValueError as err:
            problems.bad(str(err))
            ok = False
            continue
        cols, rows = header.GetSize()[:2]
        if label.shape != (rows, cols):
            problems.bad(f"{png[stem]}: label of {label.shape[0]} x {label.shape[1]} pixels (rows x "
                         f"columns) differs from its DICOM file {dcm[stem]} ({rows} x {cols})")
            ok = False
    return ok


def read_series(dicom_dir: Path) -> tuple[sitk.Image, list[Path]]:
    """The one DICOM series of ``dicom_dir`` as a volume, and its files in the reader's order
    (ascending slice position).

    Raises:
        ValueError: not exactly one series, files left out of it, or an unreadable series.
    """
    dicom_dir = Path(dicom_dir)
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(dicom_dir))
    if len(series) != 1:
        raise ValueError(f"{dicom_dir}: expected one DICOM series, found {len(series)}")
    names = [Path(n) for n in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_dir), series[0])]
    all_dcm = _stems(dicom_dir, ".dcm")
    left_out = sorted(set(all_dcm) - {n.name[:-4] for n in names})
    if left_out:
        raise ValueError(f"{dicom_dir}: file(s) not part of the series (corrupt or another "
                         f"series): {_listing(left_out)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(n) for n in names])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ValueError(f"{dicom_dir}: the DICOM series cannot be read ({str(err).strip()[-200:]})") from err
    return image, names


def _load_case(case_dir: Path) -> tuple[sitk.Image, sitk.Image]:
    """The series as one volume and the label volume on its grid (card indices)."""
    dicom_dir, ground = case_dir / SEQUENCE / "DICOM_anon", case_dir / SEQUENCE / "Ground"
    image, names = read_series(dicom_dir)
    slices = []
    for name in names:                 # the reader's order: ascending slice position
        png_path = ground / (name.name[:-4] + ".png")
        slices.append(grey_to_label(_read_png(png_path), png_path))
    label = sitk.GetImageFromArray(np.stack(slices))     # Z x rows x columns, like the image
    if label.GetSize() != image.GetSize():
        raise ValueError(f"{ground}: label volume {label.GetSize()} differs from the series "
                         f"{dicom_dir} {image.GetSize()}")
    label.CopyInformation(image)
    return image, label


def find_cases(raw: Path) -> list[RawCase]:
    """Every CHAOS case under ``raw``, pre-flight checked (all problems raised at once).

    Raises:
        FileNotFoundError: no cases, or missing folders/files (every one listed).
        ValueError: stem mismatches, corrupt files, unknown grey values, shape mismatches.
    """
    root = _mr_root(Path(raw))
    problems = Problems()
    cases = []
    for case_dir in sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.name):
        if not case_dir.name.isdigit():
            problems.bad(f"{case_dir}: case folders must be numeric CHAOS ids")
            continue
        if _check_case(case_dir, problems):
            cases.append(RawCase(int(case_dir.name), case_dir / SEQUENCE / "DICOM_anon",
                                 case_dir / SEQUENCE / "Ground",
                                 functools.partial(_load_case, case_dir)))
    problems.raise_if_any(f"CHAOS raw data {root}")
    return sorted(cases, key=lambda c: c.case_id)


def convert(raw: Path, out: Path, *, overwrite: bool = False, progress: bool = True,
            dataset: str = DATASET) -> Summary:
    """Convert every CHAOS MR case of ``raw`` into ``out`` (see module docstring)."""
    card = load_card(dataset)
    return convert_cases(card, find_cases(raw), Path(out), overwrite=overwrite, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    return converter_main("chaos_mr", __doc__, convert, argv, dataset=DATASET)


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_command(main))
