"""The ``support`` rule: which query slices hold the organ, learnt from the support scan itself.

The support scan is the one scan whose organ slices are known. Its own slices are scored by the
network exactly as query slices are, which shows how the network's evidence looks on slices with
and without the organ, for this network, organ and support (:func:`support_evidence`):

- a slice's score is its best match to the organ: the largest organ-minus-background margin over
  its pixels and the support's parts (:func:`slice_scores`; 20 x the cosine-similarity gap of
  ALPNet's prototype classifier);
- the slice threshold is the score that best separates the support's organ slices from its other
  slices (the largest balanced accuracy; the midpoint between neighbouring scores);
- the pixel threshold is the margin (0 or more, in steps of ``PIXEL_STEP``) above which the union
  of the parts' predictions best matches the support's own organ (largest Dice over its slices,
  the part slices themselves left out: they match themselves). A network that paints a blob
  around the organ paints it with smaller margins than the organ itself. A query whose margins
  are lower overall gets a lower one: its margin above which the support's share of organ
  voxels lies (:func:`support_mask`).

A query is scored the same way. When none of its slices reaches the support's slice threshold,
nor the score of the support's weakest organ slice, the organ is not found. Otherwise its organ
is the run of consecutive slices whose summed excess of the score over a threshold is largest
(:func:`choose_slices`, a maximum-sum run): isolated slices above it away from the organ are
left out, a single dip inside it is bridged. That threshold is the support's, or lower when the
query's scores are lower overall: the query's own score above which the support's share of organ
slices lies (the support's slices match its own support slices better than any query's do, so
its scores can run higher). Inside the run a pixel is organ where any part's margin exceeds the
pixel threshold; of those pixels only the largest 3-D connected component is kept (an organ is
one connected body: scattered responses on neighbouring organs and the body wall are dropped).
Nothing of the query but its image is used.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage

from util.validation.protocol import organ_slices, support_slice_indices

__all__ = ["SupportEvidence", "Choice", "slice_scores", "support_evidence", "pixel_threshold",
           "best_threshold", "part_slices_left_out",
           "best_run", "share_threshold", "choose_slices", "support_mask", "largest_component",
           "PIXEL_STEP", "CONNECTIVITY"]

log = logging.getLogger(__name__)

PIXEL_STEP = 0.125   # grid of the pixel threshold (margin units: 20 x a cosine-similarity gap)
CONNECTIVITY = 1     # 6-neighbourhood in 3-D for the largest component (scipy's default)


def largest_component(mask_zyx: np.ndarray) -> np.ndarray:
    """The largest 3-D connected component (6-neighbourhood) of a binary mask (uint8)."""
    labelled, n = ndimage.label(mask_zyx > 0, structure=ndimage.generate_binary_structure(3, CONNECTIVITY))
    if n == 0:
        return np.zeros(mask_zyx.shape, dtype=np.uint8)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return (labelled == int(sizes.argmax())).astype(np.uint8)


def slice_scores(margins: np.ndarray) -> np.ndarray:
    """Per-slice organ evidence: the largest margin over the pixels and the parts.

    Args:
        margins: float npart x Z x H x W (organ minus background logit).
    Returns:
        float64 Z.
    """
    if margins.ndim != 4:
        raise ValueError(f"margins must be npart x Z x H x W, got shape {margins.shape}")
    return margins.max(axis=(0, 2, 3)).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class SupportEvidence:
    """What the support's own slices say: ``threshold`` separates its organ slices from the
    others with ``accuracy`` (balanced); ``organ_slices`` of ``n_slices`` hold the organ, the
    weakest of them scoring ``weakest_organ``; ``voxel_share`` of its voxels; a pixel
    is organ where a part's margin exceeds ``pixel_threshold`` (Dice ``pixel_dice`` on the
    support's slices other than its part slices)."""
    threshold: float
    accuracy: float
    organ_slices: int
    n_slices: int
    pixel_threshold: float = 0.0
    pixel_dice: float = float("nan")
    voxel_share: float = 0.0
    weakest_organ: float = float("inf")


def best_threshold(score_map: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The ``t >= 0`` (grid ``PIXEL_STEP``, up to the map's maximum) whose ``score_map > t``
    best matches ``truth`` (largest Dice; the lowest such ``t`` on ties); (t, Dice)."""
    n_truth = int(np.count_nonzero(truth))
    top = float(score_map.max()) if score_map.size else 0.0
    best_t, best_d = 0.0, -1.0
    for t in np.arange(0.0, max(top, 0.0) + PIXEL_STEP, PIXEL_STEP):
        pred = score_map > t
        total = int(np.count_nonzero(pred)) + n_truth
        d = 2.0 * np.count_nonzero(pred & truth) / total if total else 1.0
        if d > best_d + 1e-12:
            best_t, best_d = float(t), float(d)
    return best_t, best_d


def part_slices_left_out(truth_zhw: np.ndarray, npart: int) -> np.ndarray:
    """Z booleans: False on the support's part slices (they match themselves), True elsewhere."""
    keep = np.ones(truth_zhw.shape[0], bool)
    keep[support_slice_indices(organ_slices(np.moveaxis(truth_zhw, 0, -1), True), npart)] = False
    return keep


def pixel_threshold(margins: np.ndarray, truth_zhw: np.ndarray) -> tuple[float, float]:
    """The margin ``t >= 0`` (grid ``PIXEL_STEP``) maximising the Dice of ``max over parts >
    t`` against the support's organ, the support's part slices left out; (t, Dice).

    Args:
        margins: npart x Z x H x W margins of the support's own slices.
        truth_zhw: Z x H x W boolean organ mask.
    """
    keep = part_slices_left_out(truth_zhw, margins.shape[0])
    return best_threshold(margins.max(axis=0)[keep], truth_zhw[keep])


def support_evidence(margins: np.ndarray, truth_zhw: np.ndarray, *, pixels: bool = True) -> SupportEvidence:
    """Calibrate on the support scan.

    Args:
        margins: npart x Z x H x W margins of the support's own slices.
        truth_zhw: Z x H x W boolean organ mask of the support.
        pixels: also search the pixel threshold of the union over the parts (the ``support``
            rule's; ``align`` calibrates its own and needs only the slice scores).
    Raises:
        ValueError: shapes differ, or the support mask is empty.
    """
    organ = np.asarray(truth_zhw).reshape(truth_zhw.shape[0], -1).any(axis=1)
    if margins.shape[1] != organ.size:
        raise ValueError(f"support margins cover {margins.shape[1]} slices, its mask {organ.size}")
    if not organ.any():
        raise ValueError("support_evidence: the support mask holds no organ voxel")
    scores = slice_scores(margins)
    levels = np.unique(scores)                                   # ascending
    # candidate thresholds: below everything, and midway between neighbouring scores
    cands = np.concatenate([[levels[0] - 1.0], (levels[:-1] + levels[1:]) / 2.0])
    best_t, best_acc = float(cands[0]), -1.0
    for t in cands:
        above = scores >= t
        tpr = float(above[organ].mean())
        tnr = float((~above[~organ]).mean()) if (~organ).any() else 1.0
        if (tpr + tnr) / 2.0 > best_acc + 1e-12:
            best_acc, best_t = (tpr + tnr) / 2.0, float(t)
    truth = np.asarray(truth_zhw, bool)
    pix_t, pix_d = pixel_threshold(margins, truth) if pixels else (0.0, float("nan"))
    return SupportEvidence(best_t, best_acc, int(organ.sum()), int(organ.size), pix_t, pix_d,
                           float(np.count_nonzero(truth)) / truth.size, float(scores[organ].min()))


def best_run(gain: np.ndarray) -> tuple[int, int] | None:
    """The run of consecutive entries with the largest positive sum (first such run on ties);
    None when no entry is positive.

    Args:
        gain: float Z.
    Returns:
        (first, last) index, inclusive.
    """
    best, best_sum = None, 0.0
    start, run = 0, 0.0
    for z, g in enumerate(np.asarray(gain, dtype=np.float64)):
        if run <= 0.0:
            start, run = z, 0.0
        run += g
        if run > best_sum:
            best, best_sum = (start, z), run
    return best


@dataclasses.dataclass(frozen=True)
class Choice:
    """The slices chosen for a query: ``extent`` (first, last) or None (organ not found), the
    query's largest score, the slice threshold used and the pixel threshold."""
    extent: tuple[int, int] | None
    peak: float
    threshold: float
    pixel_threshold: float = 0.0

    @property
    def detail(self) -> str:
        return (f"slice score (best organ margin) above {self.threshold:.2f}; query's highest "
                f"{self.peak:.2f}; pixels with a margin above {self.pixel_threshold:.3f}")


def share_threshold(scores: np.ndarray, share: float) -> float:
    """The score above which ``share`` of the slices lie: midway between the k-th and (k+1)-th
    highest score, k = round(share x Z) (at least 1); below all scores when k = Z."""
    ranked = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    k = min(max(1, int(round(share * ranked.size))), ranked.size)
    return float((ranked[k - 1] + ranked[k]) / 2.0) if k < ranked.size else float(ranked[-1] - 1.0)


def choose_slices(margins: np.ndarray, evidence: SupportEvidence) -> Choice:
    """The organ's slices in a query (module docstring): none when no slice score reaches the
    support's threshold nor the score of the support's weakest organ slice, else the
    maximum-sum run of ``score - t`` with ``t`` the lower of the
    support's threshold and the query's score at the support's share of organ slices.

    Args:
        margins: npart x Z x H x W margins of the query.
    """
    scores = slice_scores(margins)
    peak = float(scores.max()) if scores.size else float("nan")
    if not scores.size or peak < min(evidence.threshold, evidence.weakest_organ):
        return Choice(None, peak, min(evidence.threshold, evidence.weakest_organ),
                      evidence.pixel_threshold)
    t = min(evidence.threshold, share_threshold(scores, evidence.organ_slices / evidence.n_slices))
    return Choice(best_run(scores - t), peak, t, evidence.pixel_threshold)


def support_mask(margins: np.ndarray, evidence: SupportEvidence) -> tuple[np.ndarray, Choice]:
    """The ``support`` rule's mask (Z x H x W uint8): inside the chosen run, pixels where any
    part's margin exceeds the pixel threshold, of which only the largest 3-D connected component
    (:func:`largest_component`) is kept; elsewhere background. The pixel threshold is the
    support's, or lower when the query's margins are lower overall: the query's margin above
    which the support's share of organ voxels lies. The choice's extent is the kept component's
    first and last slice (the run's when no pixel is kept)."""
    choice = choose_slices(margins, evidence)
    out = np.zeros(margins.shape[1:], dtype=np.uint8)
    if choice.extent is None:
        return out, choice
    best = margins.max(axis=0)                                    # Z x H x W
    tau = evidence.pixel_threshold
    if evidence.voxel_share > 0.0:
        tau = min(tau, float(np.quantile(best, 1.0 - evidence.voxel_share)))
    z0, z1 = choice.extent
    out[z0:z1 + 1] = best[z0:z1 + 1] > tau
    out = largest_component(out)
    zs = np.flatnonzero(out.any(axis=(1, 2)))
    extent = (int(zs[0]), int(zs[-1])) if zs.size else choice.extent
    return out, dataclasses.replace(choice, extent=extent, pixel_threshold=tau)
