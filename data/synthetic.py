"""Synthetic scans in the raw layouts of the three datasets, for tests and the quickstart.

``python -m data.synthetic {chaos,synapse,c0} --out DIR --n N --seed S`` writes

- ``chaos``: ``DIR/MR/<id>/T2SPIR/DICOM_anon/IMG-0001-NNNNN.dcm`` (one DICOM series per case,
  int16, with position, orientation, spacing, thickness, instance number and UIDs) and
  ``DIR/MR/<id>/T2SPIR/Ground/IMG-0001-NNNNN.png`` (CHAOS grey values 63 liver, 126 right
  kidney, 189 left kidney, 252 spleen; same rows/columns as the DICOM file of that stem).
  File numbers ascend or descend with the slice position (``numbering``).
- ``synapse``: ``DIR/img/img00NN.nii.gz`` (int16 HU) and ``DIR/label/label00NN.nii.gz`` (0..13).
- ``c0``: ``DIR/patientN_C0.nii.gz`` and ``DIR/patientN_C0_manual.nii.gz`` (200 LV-MYO,
  500 LV-BP, 600 RV).

Each case is a pure function of (kind, seed, case id). The anatomy is a set of smooth blobs
(``data/phantom.py``) with overlapping tissue intensities, texture, bias and noise; slice count,
spacing and orientation vary per case. ``write_synthetic`` returns each case's truth: the
labels (card indices) on the raw grid as a reader returns it (for CHAOS: the series reader's
grid, DICOM rows, slices ascending along the slice normal).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import SimpleITK as sitk

from data.cli import run_command
from data.phantom import Blob, Grid, Tissue, grid_image, render, rotation
from util.io import atomic_path, atomic_write_sitk

__all__ = ["SyntheticCase", "write_synthetic", "KINDS", "CHAOS_GREY", "C0_VALUES",
           "NUMBERINGS", "main"]

log = logging.getLogger(__name__)

KINDS = ("chaos", "synapse", "c0")
NUMBERINGS = ("ascending", "descending", "alternate")
CHAOS_GREY = {1: 63, 2: 126, 3: 189, 4: 252}   # CHAOS Ground PNG values by card label
C0_VALUES = {1: 500, 2: 200, 3: 600}           # MS-CMRSeg values by C0 card label (LV-BP, LV-MYO, RV)
CHAOS_SERIES = 1                               # the XXXX of IMG-XXXX-YYYYY
UID_ROOT = "1.2.826.0.1.3680043.9.7433"        # synthetic UIDs: root.kind.seed.case.suffix
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
KIND_CODE = {"chaos": 1, "synapse": 2, "c0": 3}


@dataclasses.dataclass
class SyntheticCase:
    """One synthetic case: where it was written and what it truly contains."""
    kind: str
    case_id: int
    image_path: Path          # DICOM_anon folder (chaos) or image NIfTI
    label_path: Path          # Ground folder (chaos) or label NIfTI
    truth: sitk.Image         # uint8 card labels on the raw grid (see module docstring)
    info: dict[str, Any]

    @property
    def truth_zyx(self) -> np.ndarray:
        return sitk.GetArrayFromImage(self.truth)


def _rng(kind: str, seed: int, case_id: int) -> np.random.Generator:
    return np.random.default_rng([KIND_CODE[kind], int(seed), int(case_id)])


def _wobble(rng: np.random.Generator, amp: float = 0.12) -> tuple[float, float, float, float]:
    return (float(rng.uniform(0, amp)), float(rng.uniform(0, amp * 0.6)),
            float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))


def _jit(rng: np.random.Generator, values: Sequence[float], sd: float) -> tuple[float, ...]:
    return tuple(float(v + rng.normal(0, sd)) for v in values)


def _scale(rng: np.random.Generator, values: Sequence[float], rel: float) -> tuple[float, ...]:
    f = rng.uniform(1 - rel, 1 + rel)
    return tuple(float(v * f * rng.uniform(1 - rel / 2, 1 + rel / 2)) for v in values)


def _abdomen(rng: np.random.Generator, organ_labels: dict[str, int], extra: bool) -> list[Blob]:
    """Abdominal anatomy in patient LPS mm around the body centre (x left, y posterior, z up).

    Tissue indices: 0 air, 1 fat, 2 muscle, 3 liver, 4 kidney, 5 spleen, 6 bowel, 7 bone,
    8 gallbladder, 9 vessel, 10 pancreas.
    """
    body_a, body_b = rng.uniform(135, 165), rng.uniform(100, 118)
    body_w = _wobble(rng, 0.05)
    fat = rng.uniform(0.86, 0.92)
    blobs = [Blob((0, 0, 0), (body_a, body_b, 900), 1, 0, 0.0, body_w),
             Blob((0, 0, 0), (body_a * fat, body_b * fat, 900 * fat), 2, 0, 0.0, body_w),
             Blob(_jit(rng, (0, 72, 0), 3), (20, 18, 900), 7),
             Blob(_jit(rng, (-60, -18, 30), 7), _scale(rng, (75, 62, 80), 0.12), 3,
                  organ_labels["liver"], rng.uniform(-0.3, 0.3), _wobble(rng)),
             Blob(_jit(rng, (42, -42, 18), 8), _scale(rng, (48, 32, 42), 0.15), 6, 0,
                  rng.uniform(-0.4, 0.4), _wobble(rng)),
             Blob(_jit(rng, (-52, -48, -5), 5), _scale(rng, (15, 20, 24), 0.2), 8,
                  organ_labels.get("gallbladder", 0), rng.uniform(-0.5, 0.5), _wobble(rng, 0.08))]
    if extra:   # CT: the remaining Synapse organs
        blobs += [Blob(_jit(rng, (14, 50, 0), 2), (12, 12, 900), 9, organ_labels["aorta"]),
                  Blob(_jit(rng, (-22, 38, -10), 2), (11, 9, 120), 9, organ_labels["ivc"]),
                  Blob(_jit(rng, (6, 45, 95), 3), (8, 8, 40), 2, organ_labels["esophagus"]),
                  Blob(_jit(rng, (-22, 8, 8), 4), (24, 8, 9), 9, organ_labels["portal_vein"],
                       rng.uniform(-0.3, 0.3)),
                  Blob(_jit(rng, (10, 18, -8), 4), _scale(rng, (55, 12, 16), 0.15), 10,
                       organ_labels["pancreas"], rng.uniform(-0.35, 0.0), _wobble(rng, 0.06)),
                  Blob(_jit(rng, (-38, 42, 22), 3), (8, 11, 14), 10, organ_labels["adrenal_r"]),
                  Blob(_jit(rng, (38, 42, 22), 3), (8, 11, 14), 10, organ_labels["adrenal_l"])]
    blobs += [Blob(_jit(rng, (75, 40, 18), 6), _scale(rng, (30, 44, 50), 0.15), 5,
                   organ_labels["spleen"], rng.uniform(-0.5, 0.1), _wobble(rng)),
              Blob(_jit(rng, (-55, 55, -30), 5), _scale(rng, (26, 30, 55), 0.12), 4,
                   organ_labels["rk"], rng.uniform(-0.5, -0.1), _wobble(rng, 0.08)),
              Blob(_jit(rng, (55, 57, -25), 5), _scale(rng, (26, 30, 55), 0.12), 4,
                   organ_labels["lk"], rng.uniform(0.1, 0.5), _wobble(rng, 0.08))]
    return blobs


def _chaos_case(rng: np.random.Generator, size: int | None, tilt_deg: float
                ) -> tuple[Grid, np.ndarray, np.ndarray, dict[str, Any]]:
    n_xy = int(size) if size else int(rng.choice([256, 288, 320]))
    sxy = float(rng.uniform(390, 440) / n_xy)
    thick = float(rng.uniform(6.0, 9.0))
    n_z = int(np.clip(np.ceil(rng.uniform(170, 300) / thick), 20, 40))
    tilt = np.deg2rad(rng.uniform(-tilt_deg, tilt_deg, size=2))
    direction = rotation(tilt[0], tilt[1], 0.0)
    centre = np.array([rng.normal(0, 8), rng.normal(0, 8), rng.normal(0, 12)])
    extent = np.array([n_xy * sxy, n_xy * sxy, n_z * thick])
    origin = centre - direction @ (extent / 2 - np.array([sxy, sxy, thick]) / 2)
    grid = Grid((n_xy, n_xy, n_z), (sxy, sxy, thick), tuple(origin), direction)
    labels = {"liver": 1, "rk": 2, "lk": 3, "spleen": 4}
    blobs = _abdomen(rng, labels, extra=False)
    tissues = [Tissue(0, 0), Tissue(140, 14), Tissue(185, 18), Tissue(rng.uniform(245, 275), 20),
               Tissue(rng.uniform(410, 450), 30), Tissue(rng.uniform(355, 390), 26),
               Tissue(400, 45), Tissue(120, 15), Tissue(760, 40)]
    image, label = render(grid, blobs, tissues, rng, noise_sd=float(rng.uniform(7, 11)),
                          rician=True, bias=(float(rng.uniform(-0.15, 0.15)),
                                             float(rng.uniform(-0.15, 0.15))))
    image = np.clip(np.rint(image), 0, 32767).astype(np.int16)
    return grid, image, label, {"tilt_deg": [float(np.rad2deg(t)) for t in tilt]}


def _synapse_case(rng: np.random.Generator, size: int | None, tilt_deg: float
                  ) -> tuple[Grid, np.ndarray, np.ndarray, dict[str, Any]]:
    n_xy = int(size) if size else 512
    sxy = float(rng.uniform(350, 440) / n_xy)
    thick = float(rng.uniform(5.0, 7.5))
    n_z = int(np.clip(np.ceil(rng.uniform(170, 280) / thick), 24, 40))
    flip = bool(rng.integers(2))
    direction = np.diag([-1.0, -1.0, 1.0]) if flip else np.eye(3)
    centre = np.array([rng.normal(0, 8), rng.normal(0, 8), rng.normal(0, 10)])
    extent = np.array([n_xy * sxy, n_xy * sxy, n_z * thick])
    origin = centre - direction @ (extent / 2 - np.array([sxy, sxy, thick]) / 2)
    grid = Grid((n_xy, n_xy, n_z), (sxy, sxy, thick), tuple(origin), direction)
    labels = {"spleen": 1, "rk": 2, "lk": 3, "gallbladder": 4, "esophagus": 5, "liver": 6,
              "aorta": 8, "ivc": 9, "portal_vein": 10, "pancreas": 11, "adrenal_r": 12,
              "adrenal_l": 13}
    blobs = _abdomen(rng, labels, extra=True)
    # the stomach (label 7) is the bowel blob
    blobs = [dataclasses.replace(b, label=7) if b.tissue == 6 else b for b in blobs]
    tissues = [Tissue(-1000, 0), Tissue(-100, 15), Tissue(45, 10), Tissue(rng.uniform(55, 70), 8),
               Tissue(rng.uniform(150, 180), 15), Tissue(rng.uniform(45, 60), 8), Tissue(35, 20),
               Tissue(450, 60), Tissue(10, 5), Tissue(rng.uniform(170, 220), 10), Tissue(50, 10)]
    image, label = render(grid, blobs, tissues, rng, noise_sd=float(rng.uniform(8, 14)),
                          rician=False)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return grid, image, label, {"flipped_xy": flip}


def _c0_case(rng: np.random.Generator, size: int | None, tilt_deg: float
             ) -> tuple[Grid, np.ndarray, np.ndarray, dict[str, Any]]:
    """Short-axis bSSFP: the phantom frame is the image frame (u columns, v rows, w normal)."""
    n_xy = int(size) if size else int(rng.choice([192, 224, 256]))
    sxy = float(rng.uniform(1.25, 1.6))
    thick = float(rng.uniform(8.0, 13.0))
    n_z = int(rng.integers(9, 15))
    direction = rotation(*np.deg2rad(rng.uniform(-45, 45, size=3)))
    centre = rng.normal(0, 20, size=3)
    extent = np.array([n_xy * sxy, n_xy * sxy, n_z * thick])
    origin = centre - direction @ (extent / 2 - np.array([sxy, sxy, thick]) / 2)
    grid = Grid((n_xy, n_xy, n_z), (sxy, sxy, thick), tuple(origin), direction)
    heart = np.array([rng.normal(12, 6), rng.normal(5, 6), rng.uniform(20, 45)])
    epi = _scale(rng, (32, 30, 95), 0.1)
    endo = (epi[0] - rng.uniform(8, 12), epi[1] - rng.uniform(8, 12), epi[2] - 10)
    yaw = float(rng.uniform(-0.3, 0.3))
    body_w = _wobble(rng, 0.05)
    blobs = [Blob((0, 0, 0), (rng.uniform(150, 175), rng.uniform(110, 130), 900), 1, 0, 0.0, body_w),
             Blob((0, 0, 0), (140, 100, 900), 2, 0, 0.0, body_w),
             Blob(_jit(rng, (-72, -5, 0), 6), _scale(rng, (50, 75, 300), 0.1), 3, 0, 0.0, _wobble(rng)),
             Blob(_jit(rng, (72, -5, 0), 6), _scale(rng, (50, 75, 300), 0.1), 3, 0, 0.0, _wobble(rng)),
             Blob(tuple(heart + np.array([-36, -14, -10]) + rng.normal(0, 3, 3)),
                  _scale(rng, (32, 42, 80), 0.1), 5, 3, float(rng.uniform(-0.4, 0.4)), _wobble(rng)),
             Blob(tuple(heart), epi, 6, 2, yaw, _wobble(rng, 0.04)),
             Blob(tuple(heart), endo, 4, 1, yaw, _wobble(rng, 0.06))]
    # tissues: 0 air, 1 fat, 2 muscle, 3 lung, 4 LV blood, 5 RV blood, 6 myocardium
    tissues = [Tissue(0, 0), Tissue(300, 25), Tissue(150, 15), Tissue(30, 8),
               Tissue(rng.uniform(430, 500), 25), Tissue(rng.uniform(400, 460), 25), Tissue(110, 12)]
    image, label = render(grid, blobs, tissues, rng, frame_origin=origin + direction @ (extent / 2),
                          frame_axes=direction, noise_sd=float(rng.uniform(6, 10)), rician=True,
                          bias=(float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2))))
    image = np.clip(np.rint(image), 0, 32767).astype(np.int16)
    return grid, image, label, {}


def _chaos_numbers(numbering: str, case_id: int, n_z: int) -> list[int]:
    """File number of each slice (slices ascending along the normal)."""
    if numbering == "alternate":
        numbering = "ascending" if case_id % 2 else "descending"
    if numbering == "ascending":
        return list(range(1, n_z + 1))
    return list(range(n_z, 0, -1))


def _write_dicom_series(folder: Path, grid: Grid, image: np.ndarray, numbers: list[int],
                        seed: int, case_id: int) -> list[str]:
    """One int16 DICOM file per slice; returns the file stems in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(grid.direction)
    iop = "\\".join(f"{v:.9f}" for v in (*direction[:, 0], *direction[:, 1]))
    study = f"{UID_ROOT}.{KIND_CODE['chaos']}.{seed}.{case_id}.1"
    series = f"{study}.1"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    stems = []
    for z, number in enumerate(numbers):
        pos = np.asarray(grid.origin) + direction[:, 2] * grid.spacing[2] * z
        sl = sitk.GetImageFromArray(image[z])
        sl.SetSpacing(grid.spacing[:2])
        tags = {"0008|0060": "MR", "0008|0016": MR_IMAGE_STORAGE,
                "0008|0018": f"{series}.{number}", "0008|103e": "T2SPIR",
                "0010|0020": f"SYN{case_id}", "0020|000d": study, "0020|000e": series,
                "0020|0011": str(CHAOS_SERIES), "0020|0013": str(number),
                "0020|0032": "\\".join(f"{v:.6f}" for v in pos), "0020|0037": iop,
                "0018|0050": f"{grid.spacing[2]:.6f}", "0018|0088": f"{grid.spacing[2]:.6f}",
                "0028|0030": f"{grid.spacing[1]:.6f}\\{grid.spacing[0]:.6f}"}
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        stem = f"IMG-{CHAOS_SERIES:04d}-{number:05d}"
        with atomic_path(folder / f"{stem}.dcm") as tmp:
            writer.SetFileName(str(tmp))
            writer.Execute(sl)
        stems.append(stem)
    return stems


def _write_png(path: Path, slice_yx: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), slice_yx):
            raise ValueError(f"{path}: OpenCV could not write the PNG")


def _write_case(kind: str, out: Path, case_id: int, seed: int, numbering: str,
                size: int | None, tilt_deg: float) -> SyntheticCase:
    rng = _rng(kind, seed, case_id)
    maker = {"chaos": _chaos_case, "synapse": _synapse_case, "c0": _c0_case}[kind]
    grid, image, label, info = maker(rng, size, tilt_deg)
    truth = grid_image(grid, label)
    info.update(size=list(grid.size), spacing=list(grid.spacing))
    if kind == "chaos":
        base = out / "MR" / str(case_id) / "T2SPIR"
        numbers = _chaos_numbers(numbering, case_id, grid.size[2])
        stems = _write_dicom_series(base / "DICOM_anon", grid, image, numbers, seed, case_id)
        grey = np.zeros(256, np.uint8)
        for lab, value in CHAOS_GREY.items():
            grey[lab] = value
        for z, stem in enumerate(stems):
            _write_png(base / "Ground" / f"{stem}.png", grey[label[z]])
        for folder, suffix in ((base / "DICOM_anon", ".dcm"), (base / "Ground", ".png")):
            for stale in folder.glob(f"*{suffix}"):      # left by an earlier, different run
                if stale.name[: -len(suffix)] not in stems:
                    stale.unlink()
        info.update(numbering="ascending" if numbers[0] < numbers[-1] else "descending",
                    stems=stems)
        return SyntheticCase(kind, case_id, base / "DICOM_anon", base / "Ground", truth, info)
    if kind == "synapse":
        img_path = out / "img" / f"img{case_id:04d}.nii.gz"
        lab_path = out / "label" / f"label{case_id:04d}.nii.gz"
        lab_img = grid_image(grid, label)
    else:
        img_path = out / f"patient{case_id}_C0.nii.gz"
        lab_path = out / f"patient{case_id}_C0_manual.nii.gz"
        values = np.zeros(256, np.int16)
        for lab, value in C0_VALUES.items():
            values[lab] = value
        lab_img = grid_image(grid, values[label])
    atomic_write_sitk(grid_image(grid, image), img_path)
    atomic_write_sitk(lab_img, lab_path)
    return SyntheticCase(kind, case_id, img_path, lab_path, truth, info)


def write_synthetic(kind: str, out: Path, n: int, seed: int = 0, *,
                    ids: Sequence[int] | None = None, numbering: str = "ascending",
                    size: int | None = None, tilt_deg: float = 8.0) -> list[SyntheticCase]:
    """Write ``n`` synthetic cases of ``kind`` in its raw layout under ``out``.

    Args:
        kind: ``chaos``, ``synapse`` or ``c0``.
        out: output folder (created).
        n: number of cases (ids 1..n unless ``ids`` is given).
        seed: with the case id, decides everything about a case.
        ids: explicit case ids (overrides ``n``).
        numbering: CHAOS file numbers ``ascending`` or ``descending`` with the slice position,
            or ``alternate`` (odd ids ascending, even descending).
        size: in-plane size override (default: CHAOS 256/288/320, Synapse 512, C0 192/224/256).
        tilt_deg: CHAOS: largest tilt of the slices about x and y, in degrees.

    Returns:
        one SyntheticCase per case, with its truth labels on the raw grid.

    Raises:
        ValueError: unknown kind or numbering, or n < 1.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}: choose one of {', '.join(KINDS)}")
    if numbering not in NUMBERINGS:
        raise ValueError(f"numbering={numbering!r}: choose one of {', '.join(NUMBERINGS)}")
    case_ids = [int(i) for i in ids] if ids is not None else list(range(1, int(n) + 1))
    if not case_ids:
        raise ValueError("write_synthetic: n must be at least 1")
    out = Path(out)
    return [_write_case(kind, out, cid, int(seed), numbering, size, tilt_deg) for cid in case_ids]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS, help="which raw layout to write")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n", type=int, default=5, help="number of cases (ids 1..N)")
    p.add_argument("--seed", type=int, default=0, help="random seed (with the case id)")
    p.add_argument("--numbering", choices=NUMBERINGS, default="ascending",
                   help="CHAOS: DICOM file numbers vs slice position")
    p.add_argument("--size", type=int, default=None, help="in-plane size override")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    start = time.time()
    cases = []
    for cid in tqdm(range(1, args.n + 1), desc=f"synthetic {args.kind}", unit="case"):
        cases += write_synthetic(args.kind, args.out, 1, args.seed, ids=[cid],
                                 numbering=args.numbering, size=args.size)
    print(f"synthetic {args.kind}: {len(cases)} case(s) written to {args.out} "
          f"in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
