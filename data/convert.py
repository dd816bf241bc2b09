"""What the three dataset converters share: a raw case, the per-case loop (skip finished cases,
preprocess, write image, label and record atomically, tqdm, one-line summary), problem
collection for the pre-flight checks, and the common command-line flags.

A converter (``data/chaos_mr.py``, ``data/synapse_ct.py``, ``data/cmr_c0.py``) only finds its
cases, checks them, and knows how to load one as (image, label in card indices).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from data.cards import Card
from data.cli import new_parser
from data.geometry import check_same_grid
from data.preprocess import preprocess_scan
from util.io import atomic_write_json, atomic_write_sitk, read_image

__all__ = ["RawCase", "Summary", "Problems", "convert_cases", "read_sitk", "add_convert_args",
           "outputs_of", "check_nifti_pair", "load_nifti_pair"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RawCase:
    """One raw scan: its output id, where it comes from, and how to load it."""
    case_id: int
    image_src: Path
    label_src: Path
    load: Callable[[], tuple[sitk.Image, sitk.Image]]   # (image, label in card indices)


@dataclasses.dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def line(self, what: str, out: Path) -> str:
        return (f"{what}: {self.written} case(s) written, {self.skipped} skipped (already done; "
                f"--overwrite redoes them) in {self.seconds:.1f} s -> {out}")


class Problems:
    """Collects every problem of a pre-flight check; ``raise_if_any`` raises them at once."""

    def __init__(self) -> None:
        self.missing: list[str] = []
        self.invalid: list[str] = []

    def missing_file(self, msg: str) -> None:
        self.missing.append(msg)

    def bad(self, msg: str) -> None:
        self.invalid.append(msg)

    def raise_if_any(self, what: str) -> None:
        """FileNotFoundError when only files are missing, ValueError otherwise (both list all)."""
        items = self.missing + self.invalid
        if not items:
            return
        text = f"{what}: {len(items)} problem(s), nothing written:\n  " + "\n  ".join(items)
        if self.invalid:
            raise ValueError(text)
        raise FileNotFoundError(text)


def read_sitk(path: Path, *, header_only: bool = False) -> sitk.Image | sitk.ImageFileReader:
    """Read an image file (or only its header), naming the file when it is not readable.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable file; ``CorruptImageError`` (a ValueError) for a truncated or
            corrupt one (full reads only: the header alone does not show it).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not header_only:
        return read_image(path)          # checked: a truncated or corrupt file is refused
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        return reader
    except RuntimeError as err:
        detail = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise ValueError(f"{path}: not a readable image (corrupt or wrong format: {detail})") from err


def outputs_of(card: Card, out: Path, case_id: int) -> tuple[Path, Path, Path]:
    """(image, label, record) paths of one converted case."""
    return (out / card.file("image", id=case_id), out / card.file("label", id=case_id),
            out / card.file("record", id=case_id))


def convert_cases(card: Card, cases: Sequence[RawCase], out: Path, *, overwrite: bool = False,
                  progress: bool = True) -> Summary:
    """Preprocess each case (``data.preprocess``) and write image, label and record.

    A case whose three outputs exist is skipped unless ``overwrite``. Outputs are written
    atomically, the image last, so an interrupted run leaves finished cases and nothing else.
    """
    from tqdm import tqdm

    start = time.time()
    summary = Summary()
    out.mkdir(parents=True, exist_ok=True)
    for case in tqdm(cases, desc=f"{card.name} convert", unit="scan", disable=not progress):
        img_path, lab_path, rec_path = outputs_of(card, out, case.case_id)
        if not overwrite and img_path.is_file() and lab_path.is_file() and rec_path.is_file():
            summary.skipped += 1
            continue
        image, label = case.load()
        check_same_grid(image, label, str(case.image_src), str(case.label_src))
        t0 = time.time()
        out_img, out_lab, record = preprocess_scan(image, label, card)
        record["source"] = {"image": str(case.image_src), "label": str(case.label_src)}
        atomic_write_sitk(out_lab, lab_path)
        atomic_write_json(record, rec_path, indent=1)
        atomic_write_sitk(out_img, img_path)
        log.debug("case %s: preprocessed in %.2f s", case.case_id, time.time() - t0)
        summary.written += 1
    summary.seconds = time.time() - start
    return summary


def add_convert_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", type=Path, required=True, help="the raw download folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--overwrite", action="store_true", help="redo finished cases")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (batch logs)")


def check_nifti_pair(image: Path, label: Path, problems: Problems) -> bool:
    """Pre-flight: both headers readable, same size and geometry (problems name both files)."""
    try:
        img_h = read_sitk(image, header_only=True)
        lab_h = read_sitk(label, header_only=True)
    except (FileNotFoundError, ValueError) as err:
        problems.bad(str(err))
        return False
    try:
        check_same_grid(img_h, lab_h, str(image), str(label))
    except ValueError as err:
        problems.bad(str(err))
        return False
    return True


def load_nifti_pair(image: Path, label: Path, values: dict[int, int]) -> tuple[sitk.Image, sitk.Image]:
    """Image and label; label values mapped by ``values`` (raw value -> card index).

    Raises:
        ValueError: unreadable file, or label values not in ``values`` (names the file).
    """
    img = read_sitk(image)
    lab = read_sitk(label)
    check_same_grid(img, lab, str(image), str(label))
    arr = sitk.GetArrayFromImage(lab)
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.rint(arr)):
            raise ValueError(f"{label}: label values must be whole numbers")
        arr = np.rint(arr).astype(np.int64)
    present = np.unique(arr)
    bad = [int(v) for v in present if int(v) not in values]
    if bad:
        raise ValueError(f"{label}: unexpected label value(s) {bad[:10]} "
                         f"(expected {sorted(values)})")
    lut_keys = np.array(sorted(values), np.int64)
    lut_vals = np.array([values[k] for k in lut_keys], np.uint8)
    mapped = lut_vals[np.searchsorted(lut_keys, arr)]
    out = sitk.GetImageFromArray(mapped)
    out.CopyInformation(img)
    return img, out


def converter_main(name: str, doc: str | None, convert: Callable[..., Summary],
                   argv: Sequence[str] | None = None, *, dataset: str) -> int:
    """The command line of every converter ``python -m data.<name> --raw DIR --out OUT``;
    ``dataset`` is the card the converter writes by default (``--dataset`` picks another card
    of the same raw format, e.g. one's own)."""
    parser = new_parser(f"python -m data.{name}", doc)
    add_convert_args(parser)
    parser.add_argument("--dataset", default=dataset,
                        help="card whose labels and preprocessing recipe are used (listed below)")
    args = parser.parse_args(argv)
    summary = convert(args.raw, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                      dataset=args.dataset)
    print(summary.line(name, args.out))
    return 0
