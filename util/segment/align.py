"""The ``align`` rule: the query's organ slices found by matching its slices to the support's.

The support scan is the one scan whose organ slices are known. Both scans are abdominal volumes
of the same kind, so their slices can be paired in order along z by how they look: every slice
is summarised by the mean intensity of ``GRID`` x ``GRID`` blocks of its normalised image
(:func:`slice_descriptors`), a query slice and a support slice are as far apart as one minus the
cosine of their summaries, and dynamic time warping (:func:`warp_path`) pairs the slices of the
two scans in order (both scans' first and last slices paired with each other, every slice paired
at least once) at the least summed distance. The query slices paired with the support's organ
slices are the organ's slices (:func:`map_extent`).

Inside them the slices are assigned to the support's parts exactly as the validation protocol
assigns them in its known range (docs/method.md, 'Validation protocol'), each slice predicted by
its part, a pixel being organ where that part's margin exceeds a threshold calibrated on the
support: the margin (0 or more, steps of ``PIXEL_STEP``) at which the same part-assigned
prediction of the support's own slices best matches its organ (largest Dice, its part slices
left out: they match themselves). Of those pixels only the largest 3-D connected component is
kept. A query none of whose slices matches the organ's prototype as well as the support's
calibration requires (the ``support`` rule's slice score, :mod:`util.segment.calibrate`) has
no organ: its mask is empty. Nothing of the query but its image is used.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from util.segment.calibrate import (
    SupportEvidence,
    best_threshold,
    largest_component,
    part_slices_left_out,
    slice_scores,
    support_evidence,
)
from util.validation.protocol import assign_parts

__all__ = ["GRID", "AlignEvidence", "slice_descriptors", "warp_path", "map_extent",
           "assigned_mask", "assigned_threshold", "align_evidence", "align_mask"]

GRID = 8   # blocks per side of a slice's summary (8 x 8 blocks: 40 mm at 256 x 256 x 1.25 mm)


def slice_descriptors(image_zhw: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Each slice's block means (``grid`` x ``grid`` blocks of the in-plane image cropped to a
    multiple of ``grid``), scaled to unit length.

    Args:
        image_zhw: float Z x H x W normalised volume (H, W >= ``grid``).
    Returns:
        float64 Z x grid² (rows of unit length; a slice of zeros stays zero).
    """
    vol = np.asarray(image_zhw, dtype=np.float64)
    if vol.ndim != 3 or vol.shape[1] < grid or vol.shape[2] < grid:
        raise ValueError(f"image must be Z x H x W with H, W >= {grid}, got shape {vol.shape}")
    n_z, h, w = vol.shape
    bh, bw = h // grid, w // grid
    blocks = vol[:, : bh * grid, : bw * grid].reshape(n_z, grid, bh, grid, bw).mean(axis=(2, 4))
    flat = blocks.reshape(n_z, grid * grid)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norm > 0.0, norm, 1.0)


def warp_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """Dynamic time warping: the monotone path from (0, 0) to (n-1, m-1) through steps (1, 1),
    (1, 0), (0, 1) with the least summed ``cost`` (the diagonal step preferred on ties).

    Args:
        cost: float n x m.
    Returns:
        the path's (i, j) pairs in order.
    """
    n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError(f"warp_path needs a non-empty cost matrix, got shape {cost.shape}")
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
    i, j, path = n, m, []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = int(np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return path[::-1]


def map_extent(query_desc: np.ndarray, support_desc: np.ndarray, first: int, last: int
               ) -> tuple[int, int]:
    """(first, last) query slice paired with the support's slices ``first..last`` by
    :func:`warp_path` on one minus the cosine of the slices' descriptors."""
    path = warp_path(1.0 - query_desc @ support_desc.T)
    paired = [i for i, j in path if first <= j <= last]
    return min(paired), max(paired)


def assigned_mask(margins: np.ndarray, z_min: int, z_max: int, threshold: float = 0.0) -> np.ndarray:
    """Slices ``z_min..z_max`` predicted by the part the protocol assigns them
    (``util.validation.protocol.assign_parts``), organ where that part's margin exceeds ``threshold``;
    other slices background (Z x H x W uint8). With ``threshold`` 0 this is the protocol's mask.

    Args:
        margins: npart x Z x H x W.
    """
    npart, n_z = margins.shape[:2]
    zs = np.arange(max(z_min, 0), min(z_max, n_z - 1) + 1)
    out = np.zeros(margins.shape[1:], dtype=np.uint8)
    if zs.size:
        out[zs] = margins[assign_parts(zs, z_min, z_max, npart), zs] > threshold
    return out


def assigned_threshold(margins: np.ndarray, truth_zhw: np.ndarray) -> tuple[float, float]:
    """The margin ``t >= 0`` (grid ``PIXEL_STEP``) at which :func:`assigned_mask` over the
    support's own organ range best matches its organ (largest Dice, the part slices left out);
    (t, Dice).

    Args:
        margins: npart x Z x H x W margins of the support's own slices.
        truth_zhw: Z x H x W boolean organ mask.
    """
    npart, n_z = margins.shape[:2]
    zs = np.flatnonzero(truth_zhw.reshape(n_z, -1).any(axis=1))
    inside = np.arange(int(zs[0]), int(zs[-1]) + 1)
    assigned = np.full(margins.shape[1:], -np.inf, dtype=np.float64)   # outside the range: never organ
    assigned[inside] = margins[assign_parts(inside, int(zs[0]), int(zs[-1]), npart), inside]
    keep = part_slices_left_out(truth_zhw, npart)
    return best_threshold(assigned[keep], truth_zhw[keep])


@dataclasses.dataclass(frozen=True)
class AlignEvidence:
    """The support's calibration for ``align``: its slice descriptors (Z x GRID²), the organ's
    ``first``..``last`` slice, the pixel threshold of part-assigned predictions (Dice
    ``pixel_dice`` on its own slices) and the ``support`` rule's slice-score calibration (for
    'organ not found')."""
    descriptors: np.ndarray
    first: int
    last: int
    pixel_threshold: float
    pixel_dice: float
    scores: SupportEvidence


def align_evidence(margins: np.ndarray, truth_zhw: np.ndarray, image_zhw: np.ndarray) -> AlignEvidence:
    """Calibrate ``align`` on the support scan.

    Args:
        margins: npart x Z x H x W margins of the support's own slices.
        truth_zhw: Z x H x W boolean organ mask of the support.
        image_zhw: Z x H x W normalised support image (the network's input).
    Raises:
        ValueError: shapes differ, or the support mask is empty.
    """
    truth = np.asarray(truth_zhw, bool)
    if image_zhw.shape != truth.shape:
        raise ValueError(f"support image has shape {image_zhw.shape}, its mask {truth.shape}")
    scores = support_evidence(margins, truth, pixels=False)   # raises on an empty mask
    zs = np.flatnonzero(truth.reshape(truth.shape[0], -1).any(axis=1))
    tau, dice = assigned_threshold(margins, truth)
    return AlignEvidence(slice_descriptors(image_zhw), int(zs[0]), int(zs[-1]), tau, dice, scores)


@dataclasses.dataclass(frozen=True)
class AlignChoice:
    """What ``align`` chose for a query: the slices ``mapped`` from the support's organ slices
    (None: no slice scores high enough), the ``extent`` of the kept mask (None: organ not found),
    the query's highest slice score and the support's calibration."""
    extent: tuple[int, int] | None
    mapped: tuple[int, int] | None
    peak: float
    evidence: AlignEvidence

    @property
    def detail(self) -> str:
        ev = self.evidence
        if self.mapped is None:
            return (f"no slice scores (best organ margin) {self.score_floor:.2f} or more; query's "
                    f"highest {self.peak:.2f}")
        paired = (f"support slices {ev.first}-{ev.last} paired with slices {self.mapped[0]}-"
                  f"{self.mapped[1]} by their images; ")
        above = f"a margin above {ev.pixel_threshold:.3f}"
        if self.extent is None:
            return paired + f"no pixel there has {above}"
        return paired + f"parts as the protocol assigns them; pixels with {above}"

    @property
    def score_floor(self) -> float:
        """The slice score a query must reach somewhere for the organ to be found."""
        return min(self.evidence.scores.threshold, self.evidence.scores.weakest_organ)


def align_mask(margins: np.ndarray, image_zhw: np.ndarray, evidence: AlignEvidence
               ) -> tuple[np.ndarray, AlignChoice]:
    """The ``align`` rule's mask (Z x H x W uint8) and choice (module docstring).

    Args:
        margins: npart x Z x H x W margins of the query.
        image_zhw: Z x H x W normalised query image.
    """
    if image_zhw.shape != margins.shape[1:]:
        raise ValueError(f"query image has shape {image_zhw.shape}, its margins {margins.shape[1:]}")
    scores = slice_scores(margins)
    peak = float(scores.max()) if scores.size else float("nan")
    out = np.zeros(margins.shape[1:], dtype=np.uint8)
    choice = AlignChoice(None, None, peak, evidence)
    if not scores.size or peak < choice.score_floor:
        return out, choice
    z0, z1 = map_extent(slice_descriptors(image_zhw), evidence.descriptors, evidence.first, evidence.last)
    out = largest_component(assigned_mask(margins, z0, z1, evidence.pixel_threshold))
    zs = np.flatnonzero(out.any(axis=(1, 2)))
    extent = (int(zs[0]), int(zs[-1])) if zs.size else None      # None: no pixel kept, not found
    return out, AlignChoice(extent, (z0, z1), peak, evidence)
