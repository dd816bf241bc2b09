"""The ALP classifier: adaptive local prototype pooling and scoring
(docs/method.md, 'Model (ALPNet)').

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

The classifier scores a batch of E episodes at once (E x Q queries against E support sets).
With one episode the valid prototypes are gathered and applied as a 1x1 convolution, as in the
reference; with several, every pooled cell is scored and the invalid ones are masked out of the
softmax (-inf), which gives the same values (to float rounding) without a loop over episodes.

A ``gridconv`` support without any cell above ``thresh`` has no prototype: the reference then
crashed (and its training loop skipped the batch with a bare ``except``); here it raises
``EmptyPrototypeError``, which the training loop catches by name, counts and logs
(``has_local_prototype`` tells beforehand which episodes would raise).

The classifier always computes in full float32 (:func:`full_fp32`): autocast off, inputs cast to
float32, and no TF32 in cuDNN convolutions or CUDA matrix products (NVIDIA GPUs use TF32 for
float32 convolutions by default, which made the one-episode convolution path and the batched
``einsum`` path differ by about 1e-2). So one episode at a time equals a batch, and N ranks
equal one, on GPUs as on CPUs (to float32 rounding).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROTO_SCALE", "NORM_FLOOR", "GLOBAL_PROTO_EPS", "MODES", "EmptyPrototypeError",
           "ALPScores", "MultiProtoAsConv", "safe_norm", "full_fp32"]

log = logging.getLogger(__name__)

PROTO_SCALE = 20.0          # similarity temperature
NORM_FLOOR = 1e-4           # L2 norm floor / cosine eps
GLOBAL_PROTO_EPS = 1e-5     # masked average denominator
MODES = ("gridconv", "gridconv+", "mask")


class EmptyPrototypeError(RuntimeError):
    """A ``gridconv`` support mask has no pooled cell above the threshold: no local prototype.

    Raised for the background of an episode (query pass) or of the query's own prediction
    (alignment pass). ``episodes``: indices (in the classifier's batch) of the episodes without
    prototype; ``max_pooled``: the largest pooled mask value among them.
    """

    def __init__(self, message: str, *, episodes: list[int], max_pooled: float,
                 thresh: float) -> None:
        super().__init__(message)
        self.episodes = episodes
        self.max_pooled = max_pooled
        self.thresh = thresh


class ALPScores(NamedTuple):
    """Output of the classifier for E episodes of Q queries.

    score: E x Q x H' x W' class score.
    proto_assign: E x Q x H' x W' index of the most similar local prototype among the episode's
        prototypes (float, as the reference), or None in ``mask`` mode.
    raw_sims: when asked for, a list of E detached tensors Q x K_e x H' x W', the similarities
        ``d`` to the episode's K_e prototypes (K_e = 1 in ``mask`` mode); else None.
    """

    score: torch.Tensor
    proto_assign: torch.Tensor | None
    raw_sims: list[torch.Tensor] | None


def _tf32_switches() -> list[tuple[object, str, object]]:
    """(object, attribute, value meaning "no TF32") of this torch's TF32 switches.

    torch >= 2.9 has per-backend ``fp32_precision`` ("ieee": full float32); mixing it with the
    older ``allow_tf32`` flags makes torch raise, so only one of the two APIs is touched.
    """
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if hasattr(cudnn_conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        return [(cudnn_conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


@contextlib.contextmanager
def full_fp32(device_type: str) -> Iterator[None]:
    """Inside: autocast off on ``device_type`` and TF32 off for cuDNN convolutions and CUDA
    matrix products; the previous TF32 settings are restored on exit (also after an error)."""
    switches = _tf32_switches()
    saved = [getattr(obj, name) for obj, name, _ in switches]
    try:
        for obj, name, exact in switches:
            setattr(obj, name, exact)
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        for (obj, name, _), value in zip(switches, saved):
            setattr(obj, name, value)


def safe_norm(x: torch.Tensor, dim: int = 1, eps: float = NORM_FLOOR) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` along ``dim``."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(eps)


class MultiProtoAsConv(nn.Module):
    """ALP classifier (name kept from the original).

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
        """Masked averages ``sum(f * m) / (sum(m) + 1e-5)``: ... x C from ... x C x H' x W'
        features and ... x 1 x H' x W' masks."""
        return (sup_x * sup_y).sum(dim=(-1, -2)) / (sup_y.sum(dim=(-1, -2)) + GLOBAL_PROTO_EPS)

    def local_prototypes(self, sup_x: torch.Tensor, sup_y: torch.Tensor, thresh: float,
                         isval: bool, val_wsize: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled cells of every shot and which of them are prototypes.

        Args: sup_x E x Sh x C x H' x W'; sup_y E x Sh x 1 x H' x W'.
        Returns: (E x (Sh*gh*gw) x C cell features, shot-major as the reference; E x (Sh*gh*gw)
        bool, pooled mask > ``thresh``).
        """
        n_ep, n_shot, n_ch = sup_x.shape[:3]
        cells = self.pool(sup_x.flatten(0, 1), isval, val_wsize)     # (E*Sh) x C x gh x gw
        cells = cells.reshape(n_ep, n_shot, n_ch, -1).transpose(2, 3)  # E x Sh x G x C
        cells = cells.reshape(n_ep, -1, n_ch)                          # E x (Sh*G) x C
        cell_mask = self.pool(sup_y.flatten(0, 1), isval, val_wsize)  # (E*Sh) x 1 x gh x gw
        return cells, cell_mask.reshape(n_ep, -1) > thresh

    def has_local_prototype(self, sup_y: torch.Tensor, thresh: float, isval: bool,
                            val_wsize: int | None) -> torch.Tensor:
        """E bool: whether each episode's mask (E x Sh x 1 x H' x W') has a pooled cell above
        ``thresh``, i.e. whether ``gridconv`` finds a local prototype (else it raises)."""
        cell_mask = self.pool(sup_y.flatten(0, 1).float(), isval, val_wsize)
        return (cell_mask.reshape(sup_y.shape[0], -1) > thresh).any(dim=1)

    def forward(self, qry: torch.Tensor, sup_x: torch.Tensor, sup_y: torch.Tensor, mode: str,
                thresh: float, isval: bool = False, val_wsize: int | None = None,
                vis_sim: bool = False) -> ALPScores:
        """Score E episodes: Q queries each against the prototypes of that episode's support.

        Computed in full float32 whatever the caller's autocast and TF32 settings
        (:func:`full_fp32`); the scores are float32.

        Args:
            qry: E x Q x C x H' x W' query features.
            sup_x: E x Sh x C x H' x W' support features (the shots of one way).
            sup_y: E x Sh x 1 x H' x W' support masks of the class at the feature size, in [0, 1].
            mode: 'gridconv', 'gridconv+' or 'mask' (for every episode).
            thresh: pooled mask value a cell must exceed to give a local prototype.
            isval, val_wsize: validation pooling window instead of the training one.
            vis_sim: also return the raw similarities.
        Raises:
            EmptyPrototypeError: ``gridconv`` and an episode without any cell above ``thresh``.
        """
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        with full_fp32(qry.device.type):
            return self._scores(qry.float(), sup_x.float(), sup_y.float(), mode, thresh, isval,
                                val_wsize, vis_sim)

    def _scores(self, qry: torch.Tensor, sup_x: torch.Tensor, sup_y: torch.Tensor, mode: str,
                thresh: float, isval: bool, val_wsize: int | None, vis_sim: bool) -> ALPScores:
        n_ep = qry.shape[0]
        if mode == "mask":
            proto = self.global_prototypes(sup_x, sup_y).mean(dim=1)        # E x C
            sim = F.cosine_similarity(qry, proto[:, None, :, None, None], dim=2, eps=NORM_FLOOR)
            score = sim * PROTO_SCALE                                       # E x Q x H' x W'
            sims = [x.detach().unsqueeze(1).clone() for x in score] if vis_sim else None
            return ALPScores(score, None, sims)

        cells, valid = self.local_prototypes(sup_x, sup_y, thresh, isval, val_wsize)
        if mode == "gridconv+":
            glb = self.global_prototypes(sup_x, sup_y)                      # E x Sh x C
            cells = torch.cat([cells, glb], dim=1)                          # E x K x C
            valid = torch.cat([valid, valid.new_ones(glb.shape[:2])], dim=1)
        else:
            self._check_nonempty(sup_y, valid, thresh, isval, val_wsize)
        qry_n = safe_norm(qry, dim=2)                                       # E x Q x C x H' x W'
        if n_ep == 1:  # the reference computation: the valid prototypes as a 1x1 convolution
            protos = safe_norm(cells[0][valid[0]], dim=1)                   # K x C
            dists = F.conv2d(qry_n[0], protos[..., None, None]).unsqueeze(0) * PROTO_SCALE
            logits = dists                                                  # 1 x Q x K x H' x W'
        else:          # every cell, the invalid ones out of the softmax
            dists = torch.einsum("ekc,eqchw->eqkhw", safe_norm(cells, dim=2), qry_n) * PROTO_SCALE
            logits = dists.masked_fill(~valid[:, None, :, None, None], float("-inf"))
        score = (F.softmax(logits, dim=2) * dists).sum(dim=2)               # E x Q x H' x W'
        nearest = logits.detach().argmax(dim=2)                             # E x Q x H' x W'
        if n_ep > 1:   # cell index -> index among the episode's prototypes
            rank = valid.long().cumsum(dim=1) - 1                           # E x K
            nearest = rank.gather(1, nearest.flatten(1)).view_as(nearest)
        sims = None
        if vis_sim:
            sims = [d.detach().clone() if n_ep == 1 else d.detach()[:, v].clone()
                    for d, v in zip(dists, valid)]
        return ALPScores(score, nearest.float(), sims)

    def _check_nonempty(self, sup_y: torch.Tensor, valid: torch.Tensor, thresh: float,
                        isval: bool, val_wsize: int | None) -> None:
        empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            pooled = self.pool(sup_y.flatten(0, 1), isval, val_wsize).reshape(valid.shape)
            top = float(pooled[empty].max()) if pooled.numel() else float("nan")
            raise EmptyPrototypeError(
                f"no local prototype in episode(s) {empty}: no pooled support-mask cell above "
                f"{thresh} (largest {top:.4f}, {valid.shape[1]} cells)", episodes=empty,
                max_pooled=top, thresh=thresh)
