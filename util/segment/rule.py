"""Which support part predicts which query slice, with and without a known organ extent.

With a z-range (``--z-range ZMIN ZMAX``) the query slices are assigned to parts exactly as the
validation protocol does it (docs/method.md, 'Validation protocol';
``util.validation.protocol.assign_parts``) and only the slices of the range are predicted: on a benchmark
scan with its ground-truth range the mask equals the one validation scores.

Without it nothing of the query but its image is used. Every query slice is predicted with the
support slice of every part (the query is encoded once; only the prototype head runs ``npart``
times): :func:`predict_every_part` gives npart x Z x H x W margins (organ minus background
logit). The rules (``RULES``):

- ``align`` (the default): the query's slices are paired in order with the support's by how their
  images look (dynamic time warping, :mod:`util.segment.align`); the slices paired with the
  support's organ slices are the organ's, predicted part by part as the protocol assigns them,
  with a pixel threshold calibrated on the support and the largest 3-D component kept; a query
  whose slices never match the organ's prototype as well as the support calibration requires
  gets an empty mask.
- ``support``: the organ's slices are the maximum-sum run of the slice score over a
  threshold calibrated on the support scan's own slices (:mod:`util.segment.calibrate`); a query
  with no slice above it gets an empty mask. Inside the run a pixel is organ where any part's
  margin exceeds a pixel threshold calibrated on the support too, and of those pixels only the
  largest 3-D connected component is kept; outside the run, background.
- ``extent``: the union over the parts (a pixel is organ when any part predicts it); its largest
  3-D connected component gives the first and last slice; parts assigned inside as above.
- ``max``: the union over the parts on every slice (no extent).

docs/segment.md, 'Label-free rule' and 'Measured on the real CHAOS scans', explains them and
reports their Dice against the protocol's.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import numpy as np
import torch

from util.segment.align import AlignEvidence, align_evidence, align_mask, assigned_mask
from util.segment.calibrate import SupportEvidence, largest_component, support_evidence, support_mask
from util.validation.protocol import Support, encode_slices, predict_from_support

__all__ = ["RULES", "DEFAULT_RULE", "predict_every_part", "margins_every_part", "combine_max",
           "largest_component", "estimated_extent", "masks_by_part", "label_free_mask",
           "RuleResult", "support_evidence", "SupportEvidence", "align_evidence", "AlignEvidence"]

log = logging.getLogger(__name__)

RULES = ("align", "support", "extent", "max")
DEFAULT_RULE = "align"


def margins_every_part(model: torch.nn.Module, supports: Sequence[Support], image_hwz: np.ndarray,
                       *, batch_size: int = 8, device: torch.device | str = "cpu",
                       val_wsize: int = 2, on_batch: Callable[[int], None] | None = None
                       ) -> list[np.ndarray]:
    """:func:`predict_every_part` for several supports (e.g. organs) from one encoding of the
    volume: each query slice is encoded once, then scored by every part of every support.

    Returns:
        one float32 npart x Z x H x W array per support (see :func:`predict_every_part`).
    """
    h, w, n_z = image_hwz.shape
    outs = [np.zeros((s.npart, n_z, h, w), dtype=np.float32) for s in supports]
    step = max(int(batch_size), 1)
    for start in range(0, n_z, step):
        chunk = list(range(start, min(start + step, n_z)))
        fts = encode_slices(model, image_hwz, chunk, device=device)      # B x C x H' x W'
        for support, out in zip(supports, outs):
            for p in range(support.npart):
                logits = predict_from_support(model, support, fts, [p] * len(chunk),
                                              img_size=(h, w), val_wsize=val_wsize)  # B x 2 x H x W
                out[p, chunk] = (logits[:, 1] - logits[:, 0]).float().cpu().numpy()
        if on_batch is not None:
            on_batch(len(chunk))
    return outs


def predict_every_part(model: torch.nn.Module, support: Support, image_hwz: np.ndarray, *,
                       batch_size: int = 8, device: torch.device | str = "cpu",
                       val_wsize: int = 2, on_batch: Callable[[int], None] | None = None
                       ) -> np.ndarray:
    """Predict every slice of a volume with the support of every part.

    Each query slice is encoded once (batches of ``batch_size``); the prototype head then runs
    once per part on the same features.

    Args:
        image_hwz: H x W x Z normalised query volume.
        on_batch: optional callable(n_slices) after each batch (progress bars).
    Returns:
        float32 npart x Z x H x W margins: organ logit minus background logit of each part for
        each slice. ``margins > 0`` is the network's (argmax) prediction; ``sigmoid(margins)``
        its organ probability.
    """
    return margins_every_part(model, [support], image_hwz, batch_size=batch_size, device=device,
                              val_wsize=val_wsize, on_batch=on_batch)[0]


def combine_max(per_part: np.ndarray) -> np.ndarray:
    """Largest foreground probability over the parts, thresholded at 1/2: a voxel is organ when
    any part predicts it (npart x Z x H x W margins -> Z x H x W uint8)."""
    return (per_part > 0).any(axis=0).astype(np.uint8)


def estimated_extent(per_part: np.ndarray) -> tuple[int, int] | None:
    """(first, last) slice of the largest component of :func:`combine_max`; None when no part
    predicts any organ voxel."""
    comp = largest_component(combine_max(per_part))
    zs = np.flatnonzero(comp.any(axis=(1, 2)))
    return (int(zs[0]), int(zs[-1])) if zs.size else None


def masks_by_part(per_part: np.ndarray, z_min: int, z_max: int) -> np.ndarray:
    """The protocol's mask for a known extent: slice ``z`` in ``[z_min, z_max]`` takes the
    prediction of its part (``assign_parts``), other slices are background (Z x H x W uint8)."""
    return assigned_mask(per_part, z_min, z_max, 0.0)


@dataclasses.dataclass(frozen=True)
class RuleResult:
    """A label-free rule's answer for one query: ``mask`` Z x H x W uint8, the ``extent``
    (first, last slice) it predicted (None: ``max``, or the organ not found) and ``how`` it chose
    them (for the CSV)."""
    mask: np.ndarray
    extent: tuple[int, int] | None
    how: str

    @property
    def found(self) -> bool:
        return bool(self.mask.any())


def label_free_mask(per_part: np.ndarray, rule: str = DEFAULT_RULE,
                    evidence: SupportEvidence | AlignEvidence | None = None,
                    image_zhw: np.ndarray | None = None) -> RuleResult:
    """The mask of a label-free rule (module docstring).

    Args:
        per_part: npart x Z x H x W margins of the query (:func:`predict_every_part`).
        evidence: the support's calibration: :func:`align_evidence` for ``align``,
            :func:`support_evidence` for ``support``.
        image_zhw: Z x H x W normalised query image (``align`` pairs its slices with the
            support's).
    Raises:
        ValueError: an unknown rule, or a rule without the calibration or image it needs.
    """
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: choose one of {', '.join(RULES)}")
    empty = np.zeros(per_part.shape[1:], dtype=np.uint8)
    if rule == "max":
        return RuleResult(combine_max(per_part), None, "max: union of the parts on every slice")
    if rule == "extent":
        extent = estimated_extent(per_part)
        if extent is None:
            return RuleResult(empty, None, "extent: no slice predicted")
        return RuleResult(masks_by_part(per_part, *extent), extent,
                          f"extent: largest 3-D component spans slices {extent[0]}-{extent[1]}")
    if rule == "align":
        if not isinstance(evidence, AlignEvidence) or image_zhw is None:
            raise ValueError("rule 'align' needs the support's calibration (align_evidence) and "
                             "the query's image")
        mask, chosen = align_mask(per_part, image_zhw, evidence)
        if chosen.extent is None:
            return RuleResult(empty, None, f"align: organ not found, {chosen.detail}")
        return RuleResult(mask, chosen.extent, f"align: slices {chosen.extent[0]}-{chosen.extent[1]}, "
                                               f"{chosen.detail}")
    if not isinstance(evidence, SupportEvidence):
        raise ValueError("rule 'support' needs the support's calibration (support_evidence)")
    mask, choice = support_mask(per_part, evidence)
    if choice.extent is None:
        return RuleResult(empty, None, f"support: organ not found, no {choice.detail}")
    return RuleResult(mask, choice.extent,
                      f"support: slices {choice.extent[0]}-{choice.extent[1]}, {choice.detail}")
