"""The ALP classifier: adaptive local prototype pooling and scoring (SPEC §4).

Three modes, all giving one score map per query for one class:

- ``gridconv`` (local prototypes; the background): pool support features and mask with a window
  (training: kernel = stride = ``feature_hw / proto_grid``; validation: ``val_wsize``); every cell
  whose pooled mask is > ``thresh`` gives a prototype. With ``d_k = 20 * <q_n, p_k,n>`` (query
  and prototypes L2-normalised along channels, norm floored at 1e-4) the score is
  ``sum_k softmax_k(d) * d_k``.
- ``gridconv+`` (the foreground when big enough): as ``gridconv`` plus the masked-average global
  prototype ``sum(f * m) / (sum(m) + 1e-5)`` of every shot.
- ``mask`` (vanilla PANet): ``20 * cos(q, p)`` (eps 1e-4) with the global prototype averaged
  over the shots.

A ``gridconv`` support without any cell above ``thresh`` has no prototype: the reference then
crashed (and its training loop skipped the batch with a bare ``except``); here it raises
``EmptyPrototypeError``, which the training loop catches by name, counts and logs.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROTO_SCALE", "NORM_FLOOR", "GLOBAL_PROTO_EPS", "MODES", "EmptyPrototypeError",
           "ALPScores", "MultiProtoAsConv", "safe_norm"]

log = logging.getLogger(__name__)

PROTO_SCALE = 20.0          # similarity temperature (SPEC §4)
NORM_FLOOR = 1e-4           # L2 norm floor / cosine eps (SPEC §4)
GLOBAL_PROTO_EPS = 1e-5     # masked average denominator (SPEC §4)
MODES = ("gridconv", "gridconv+", "mask")


class EmptyPrototypeError(RuntimeError):
    """A ``gridconv`` support mask has no pooled cell above the threshold: no local prototype.

    Raised for the background of an episode (query pass) or of the query's own prediction
    (alignment pass); ``max_pooled`` is the largest pooled mask value found.
    """

    def __init__(self, message: str, *, max_pooled: float, thresh: float) -> None:
        super().__init__(message)
        self.max_pooled = max_pooled
        self.thresh = thresh


class ALPScores(NamedTuple):
    """Output of the classifier for ``Bq`` queries.

    score: Bq x 1 x H' x W' class score.
    proto_assign: Bq x H' x W' index of the most similar prototype (float, as the reference), or
        None in ``mask`` mode.
    raw_sims: Bq x K x H' x W' detached similarities ``d`` (K prototypes; K = 1 in ``mask``
        mode), only when asked for.
    """

    score: torch.Tensor
    proto_assign: torch.Tensor | None
    raw_sims: torch.Tensor | None


def safe_norm(x: torch.Tensor, dim: int = 1, eps: float = NORM_FLOOR) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along ``dim``."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(eps)


class MultiProtoAsConv(nn.Module):
    """ALP classifier (name kept for compatibility with the original, SPEC §7).

    Args:
        proto_grid: prototype grid (gh, gw), e.g. ``[8, 8]``.
        feature_hw: expected feature size (h, w), e.g. ``[32, 32]``; the training pooling window
            is ``feature_hw // proto_grid`` (4 x 4).
    """

    def __init__(self, proto_grid: Sequence[int], feature_hw: Sequence[int],
                 upsample_mode: str = "bilinear") -> None:
        super().__init__()
        self.proto_grid = list(proto_grid)
        self.feature_hw = list(feature_hw)
        self.upsample_mode = upsample_mode
        kernel = [f // g for f, g in zip(feature_hw, proto_grid)]
        if len(kernel) != 2 or min(kernel) < 1:
            raise ValueError(f"feature_hw={list(feature_hw)} must be at least proto_grid="
                             f"{list(proto_grid)} on both axes")
        self.train_window = tuple(kernel)

    def pool(self, x: torch.Tensor, isval: bool, val_wsize: int | None) -> torch.Tensor:
        """Average pooling, kernel = stride = the training window or ``val_wsize``."""
        if isval:
            if val_wsize is None:
                raise ValueError("val_wsize is required when isval=True")
            return F.avg_pool2d(x, val_wsize)
        return F.avg_pool2d(x, self.train_window)

    @staticmethod
    def global_prototypes(sup_x: torch.Tensor, sup_y: torch.Tensor) -> torch.Tensor:
        """Masked averages ``sum(f * m) / (sum(m) + 1e-5)``: Sh x C from Sh x C x H' x W' features
        and Sh x 1 x H' x W' masks."""
        return (sup_x * sup_y).sum(dim=(-1, -2)) / (sup_y.sum(dim=(-1, -2)) + GLOBAL_PROTO_EPS)

    def forward(self, qry: torch.Tensor, sup_x: torch.Tensor, sup_y: torch.Tensor, mode: str,
                thresh: float, isval: bool = False, val_wsize: int | None = None,
                vis_sim: bool = False) -> ALPScores:
        """Score ``Bq`` queries against the prototypes of one support set.

        Args:
            qry: Bq x C x H' x W' query features.
            sup_x: Sh x C x H' x W' support features (the shots of one way).
            sup_y: Sh x 1 x H' x W' support mask of the class, at the feature size, in [0, 1].
            mode: 'gridconv', 'gridconv+' or 'mask'.
            thresh: pooled mask value a cell must exceed to give a local prototype.
            isval, val_wsize: validation pooling window instead of the training one.
            vis_sim: also return the raw similarities.
        Raises:
            EmptyPrototypeError: ``gridconv`` without any cell above ``thresh``.
        """
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        if mode == "mask":
            proto = self.global_prototypes(sup_x, sup_y).mean(dim=0, keepdim=True)  # 1 x C
            sim = F.cosine_similarity(qry, proto[..., None, None], dim=1, eps=NORM_FLOOR)
            score = (sim * PROTO_SCALE).unsqueeze(1)                          # Bq x 1 x H' x W'
            return ALPScores(score, None, score.detach().clone() if vis_sim else None)

        n_shot, n_ch = sup_x.shape[:2]
        cells = self.pool(sup_x, isval, val_wsize)                        # Sh x C x gh x gw
        cells = cells.reshape(n_shot, n_ch, -1).permute(0, 2, 1).reshape(-1, n_ch)  # (Sh*gh*gw) x C
        cell_mask = self.pool(sup_y, isval, val_wsize).reshape(-1)          # (Sh*gh*gw)
        protos = cells[cell_mask > thresh]                                  # K x C
        if mode == "gridconv+":
            glb = self.global_prototypes(sup_x, sup_y)                          # Sh x C
            protos = torch.cat([protos, glb], dim=0)                            # (K + Sh) x C
        elif protos.shape[0] == 0:
            top = float(cell_mask.max()) if cell_mask.numel() else float("nan")
            raise EmptyPrototypeError(
                f"no local prototype: no pooled support-mask cell above {thresh} "
                f"(largest {top:.4f}, {cell_mask.numel()} cells)", max_pooled=top, thresh=thresh)
        dists = F.conv2d(safe_norm(qry), safe_norm(protos)[..., None, None]) * PROTO_SCALE
        # Bq x K x H' x W'
        score = (F.softmax(dists, dim=1) * dists).sum(dim=1, keepdim=True)  # Bq x 1 x H' x W'
        assign = dists.detach().argmax(dim=1).float()                       # Bq x H' x W'
        return ALPScores(score, assign, dists.detach().clone() if vis_sim else None)
