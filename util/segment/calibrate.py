"""The ``support`` rule: which query slices hold the organ, learnt from the support scan itself.

The support scan is the one scan whose organ slices are known. Its own slices are scored by the
network exactly as query slices are, which shows how the network's evidence looks on slices with
and without the organ, for this network, organ and support (:func:`support_evidence`):

- a slice's score is its best match to the organ: the largest organ-minus-background margin over
  its pixels and the support's parts (:func:`slice_scores`; 20 x the cosine-similarity gap of
  ALPNet's prototype classifier);
- the threshold is the score that best separates the support's organ slices from its other
  slices (the largest balanced accuracy; the midpoint between neighbouring scores).

A query is scored the same way; its organ is the run of consecutive slices whose summed excess
of the score over the threshold is largest (:func:`choose_slices`, a maximum-sum run): isolated
slices above the threshold away from the organ are left out, a single dip inside it is bridged,
and a query with no slice above the threshold has no organ. Nothing of the query but its image
is used.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

__all__ = ["SupportEvidence", "Choice", "slice_scores", "support_evidence", "best_run",
           "choose_slices"]

log = logging.getLogger(__name__)


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
    others with ``accuracy`` (balanced); ``organ_slices`` of ``n_slices`` hold the organ."""
    threshold: float
    accuracy: float
    organ_slices: int
    n_slices: int


def support_evidence(margins: np.ndarray, truth_zhw: np.ndarray) -> SupportEvidence:
    """Calibrate on the support scan.

    Args:
        margins: npart x Z x H x W margins of the support's own slices.
        truth_zhw: Z x H x W boolean organ mask of the support.
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
    return SupportEvidence(best_t, best_acc, int(organ.sum()), int(organ.size))


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
    query's largest score and the threshold used."""
    extent: tuple[int, int] | None
    peak: float
    threshold: float

    @property
    def detail(self) -> str:
        return (f"slice score (best organ margin) above the support's threshold "
                f"{self.threshold:.2f}; query's highest {self.peak:.2f}")


def choose_slices(margins: np.ndarray, evidence: SupportEvidence) -> Choice:
    """The organ's slices in a query: the maximum-sum run of ``score - threshold`` (module
    docstring).

    Args:
        margins: npart x Z x H x W margins of the query.
    """
    scores = slice_scores(margins)
    extent = best_run(scores - evidence.threshold)
    return Choice(extent, float(scores.max()) if scores.size else float("nan"), evidence.threshold)
