"""The request of ``segment.py`` and its pre-flight check: every input is read or probed and every
problem collected and raised once, before the network is built or anything is written
(docs/segment.md, 'Inputs and outputs').
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from data.cards import Card, base_name, load_card
from data.geometry import check_same_grid
from util.backends import PRECISIONS
from util.io import read_image, verify_image_file
from util.segment.checkpoint_info import CheckpointInfo, inspect_checkpoint
from util.segment.rule import DEFAULT_RULE, RULES

__all__ = ["SegmentRequest", "Plan", "preflight", "query_stem", "probe_image", "MODALITY_CARDS",
           "mask_name", "DEFAULT_BATCH_SIZE"]

log = logging.getLogger(__name__)

MODALITY_CARDS = {"MR": "CHAOST2", "CT": "SABS"}   # --modality: the card whose recipe is used
DEFAULT_BATCH_SIZE = 8                             # query slices per encoder batch (val_batch_size)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


@dataclasses.dataclass(frozen=True)
class SegmentRequest:
    """Everything ``segment.py`` is asked to do (its arguments, typed).

    ``z_range`` is in the query's own slice indices (last array axis), inclusive; with
    ``preprocessed`` those are the training-geometry slices. ``norm_stats`` (mean, std) is only
    used by fold-global (CT) cards.
    """
    checkpoint: Path
    support_image: Path
    support_label: Path
    label: int
    queries: tuple[Path, ...]
    out: Path
    dataset: str | None = None
    modality: str | None = None
    preprocessed: bool = False
    z_range: tuple[int, int] | None = None
    device: str = "cpu"
    batch_size: int = DEFAULT_BATCH_SIZE
    rule: str = DEFAULT_RULE
    norm_stats: tuple[float, float] | None = None
    overlay_slices: int = 4
    precision: str = "fp32"            # 'bf16': autocast (docs/segment.md, 'Speed')


@dataclasses.dataclass
class Plan:
    """A checked request: the card, the checkpoint, the support volumes (read), the queries."""
    request: SegmentRequest
    card: Card
    checkpoint: CheckpointInfo
    support_image: sitk.Image
    support_label: sitk.Image
    queries: list[Path]
    query_slices: list[int]


def query_stem(path: str | Path) -> str:
    """``/a/case_1.nii.gz`` -> ``case_1`` (the known image suffixes removed)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def mask_name(query: str | Path, label: int) -> str:
    """``<query stem>_label<C>.nii.gz``."""
    return f"{query_stem(query)}_label{int(label)}.nii.gz"


def probe_image(path: str | Path) -> tuple[int, ...]:
    """Size (x, y, z) of a 3-D image from its header, once the file is known to be complete.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, truncated or corrupt (``util.io.CorruptImageError``), or not
            3-D (names the file).
    """
    path = Path(path)
    verify_image_file(path)    # a truncated query is refused before any mask is written
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ValueError(f"{path}: not a readable image "
                         f"({str(err).strip().splitlines()[-1]})") from err
    size = tuple(int(v) for v in reader.GetSize())
    if len(size) != 3:
        raise ValueError(f"{path}: a {len(size)}-D image; segment.py reads 3-D volumes")
    return size


class _Problems:
    """Collected problems, raised once (FileNotFoundError when every one is a missing file)."""

    def __init__(self) -> None:
        self.items: list[BaseException] = []

    def add(self, err: BaseException) -> None:
        self.items.append(err)

    def raise_any(self) -> None:
        if not self.items:
            return
        text = "\n  - ".join(str(e) for e in self.items)
        kind = FileNotFoundError if all(isinstance(e, FileNotFoundError) for e in self.items) else ValueError
        raise kind(f"segment: nothing done, {len(self.items)} problem(s):\n  - {text}")


def _resolve_card(req: SegmentRequest, ckpt: CheckpointInfo | None) -> Card:
    if req.dataset and req.modality:
        raise ValueError("give --dataset or --modality, not both")
    if req.dataset:
        return load_card(req.dataset)
    if req.modality:
        key = req.modality.upper()
        if key not in MODALITY_CARDS:
            raise ValueError(f"--modality {req.modality}: choose one of {', '.join(MODALITY_CARDS)}")
        return load_card(MODALITY_CARDS[key])
    if ckpt is not None and ckpt.dataset:
        log.info("dataset %s taken from the checkpoint's config", ckpt.dataset)
        return load_card(base_name(ckpt.dataset))
    raise ValueError("give --dataset NAME or --modality {MR,CT}: the checkpoint does not name "
                     "the dataset it was trained on")


def _check_options(req: SegmentRequest, problems: _Problems) -> None:
    if int(req.label) < 1:
        problems.add(ValueError(f"--label {req.label}: the organ's label value must be at least 1"))
    if int(req.batch_size) < 1:
        problems.add(ValueError(f"--batch-size {req.batch_size}: must be at least 1"))
    if req.precision not in PRECISIONS:
        problems.add(ValueError(f"--precision {req.precision}: choose one of {', '.join(PRECISIONS)}"))
    try:
        device = torch.device(req.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            problems.add(ValueError(f"--device {req.device}: no CUDA/ROCm GPU is visible (use --device cpu)"))
    except RuntimeError as err:
        problems.add(ValueError(f"--device {req.device}: not a device ({err})"))
    if req.rule not in RULES:
        problems.add(ValueError(f"rule={req.rule!r}: choose one of {', '.join(RULES)}"))
    if not req.queries:
        problems.add(ValueError("no --query scan given"))
    if req.z_range is not None:
        z0, z1 = (int(v) for v in req.z_range)
        if len(req.queries) > 1:
            problems.add(ValueError(f"--z-range {z0} {z1} holds slice indices of one query scan, "
                                    f"but {len(req.queries)} were given: run one query at a time"))
        if z0 < 0 or z1 < z0:
            problems.add(ValueError(f"--z-range {z0} {z1}: need 0 <= ZMIN <= ZMAX"))
    if req.norm_stats is not None and not float(req.norm_stats[1]) > 0:
        problems.add(ValueError(f"--norm-stats {req.norm_stats}: the standard deviation must be > 0"))
    stems: dict[str, Path] = {}
    for q in req.queries:
        stem = query_stem(q)
        if stem in stems:
            problems.add(ValueError(f"queries {stems[stem]} and {q} share the name {stem!r}: "
                                    f"their masks would overwrite each other"))
        stems[stem] = Path(q)
    if Path(req.out).exists() and not Path(req.out).is_dir():
        problems.add(ValueError(f"--out {req.out}: exists and is not a folder"))


def _check_support(req: SegmentRequest, problems: _Problems) -> tuple[sitk.Image | None, sitk.Image | None]:
    image = label = None
    for what, path in (("image", req.support_image), ("label", req.support_label)):
        try:
            img = read_image(path)
        except (FileNotFoundError, ValueError) as err:
            problems.add(type(err)(f"support {what}: {err}"))
            continue
        if img.GetDimension() != 3:
            problems.add(ValueError(f"{path}: support {what} is {img.GetDimension()}-D, need 3-D"))
            continue
        if what == "image":
            image = img
        else:
            label = img
    if image is None or label is None:
        return image, label
    try:
        check_same_grid(image, label, str(req.support_image), str(req.support_label))
    except ValueError as err:
        problems.add(ValueError(f"support image and label differ in geometry: {err}"))
        return image, None
    values = np.unique(sitk.GetArrayViewFromImage(label))
    if int(req.label) not in values.astype(np.int64).tolist():
        shown = ", ".join(str(v) for v in values[:20].tolist())
        problems.add(ValueError(f"{req.support_label}: label value {req.label} does not occur in "
                                f"the support label (values present: {shown})"))
        return image, None
    return image, label


def preflight(req: SegmentRequest) -> Plan:
    """Check a request completely before any work: options, checkpoint, card, support image and
    label (read; same grid; the label value present), every query (header probed; 3-D; the
    z-range inside it).

    Raises:
        FileNotFoundError: only missing files (all of them named).
        ValueError: every problem found, one per line.
    """
    problems = _Problems()
    _check_options(req, problems)
    ckpt = None
    try:
        ckpt = inspect_checkpoint(req.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        problems.add(err)
    card = None
    try:
        card = _resolve_card(req, ckpt)
    except ValueError as err:
        problems.add(err)
    sup_img, sup_lab = _check_support(req, problems)
    sizes = []
    for q in req.queries:
        try:
            sizes.append(probe_image(q)[2])
        except (FileNotFoundError, ValueError) as err:
            problems.add(type(err)(f"query {err}"))
    if req.z_range is not None and len(sizes) == 1 and int(req.z_range[1]) >= sizes[0]:
        problems.add(ValueError(f"--z-range {req.z_range[0]} {req.z_range[1]}: query "
                                f"{req.queries[0]} has {sizes[0]} slices (0..{sizes[0] - 1})"))
    problems.raise_any()
    return Plan(req, card, ckpt, sup_img, sup_lab, [Path(q) for q in req.queries], sizes)
