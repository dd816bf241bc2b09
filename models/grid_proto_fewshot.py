"""ALPNet: ``FewShotSeg``, the few-shot segmenter of SSL-ALPNet, original interface
(docs/method.md, 'Model (ALPNet)').

``FewShotSeg(in_channels=3, pretrained_path=None, cfg=dict)`` and
``forward(supp_imgs, fore_mask, back_mask, qry_imgs, isval, val_wsize, show_viz=False)`` are kept
for compatibility: users' scripts import them. The state_dict keys are those of the
original code (``tests/fixtures/alpnet/state_dict_keys.json`` for ``dlfcn_res101``), so its
checkpoints load, and ours load in its code.

Extensions:

- Batch size above 1 (the original asserted 1): each batch item is its own episode (its support
  with its query). In ``eval()`` every item's output equals its batch-1 output. In ``train()``
  the encoder's BatchNorm statistics span all support and query images of the batch,
  as they spanned the support and query of one episode in the original.
- Split inference for validation: ``encode`` once per support, then ``predict_from_features``
  on batches of encoded queries; the result equals ``forward``.
- The prototype head runs in full float32 even under autocast, without TF32 (bf16 runs only the
  encoder in bf16): ``models.alpmodule.full_fp32``.
- A background support with no pooled cell above the threshold raises ``EmptyPrototypeError``
  (the original crashed and its training loop skipped the batch with a bare ``except``).
- In the alignment pass, an episode whose query is predicted foreground almost everywhere has no
  background prototype: that episode's alignment loss is 0 (the original skipped the whole
  batch), the others count; ``align_failures`` lists those episodes of the last forward.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.alpmodule import EmptyPrototypeError, MultiProtoAsConv
from models.backbone import build_encoder, resolve_init
from util.checkpoint import load_alpnet_weights

__all__ = ["FewShotSeg", "EmptyPrototypeError", "DEFAULT_CFG", "BG_PROT_MODE", "FG_PROT_MODE",
           "BG_THRESH", "FG_THRESH", "FG_MODE_POOL", "IGNORE_INDEX"]

log = logging.getLogger(__name__)

BG_PROT_MODE = "gridconv"       # background: local prototypes only
FG_PROT_MODE = "gridconv+"      # foreground: local + global prototypes
BG_THRESH = 0.95                # pooled-mask threshold of a local prototype
FG_THRESH = 0.95                # ... and of the foreground mode choice
FG_MODE_POOL = 4                # foreground mode choice: 4 x 4 average pooling
IGNORE_INDEX = 255              # support label outside both masks
CLS_NAMES = ("grid_proto",)

# cfg keys of the original ``model`` dict plus init_weights, with the original defaults
# (docs/method.md, 'Config keys') except align=False (the original default when no cfg is
# given) and cls_name (the original default None failed an assertion).
DEFAULT_CFG: dict[str, Any] = {
    "align": False,
    "use_coco_init": True,
    "init_weights": None,
    "which_model": "dlfcn_res101",
    "cls_name": "grid_proto",
    "proto_grid_size": 8,
    "feature_hw": [32, 32],
    "reload_model_path": None,
}


class FewShotSeg(nn.Module):
    """ALPNet (1-way, any number of shots, one query per episode, any batch size).

    Args:
        in_channels: image channels; must be 3 (slices repeated to 3 channels).
        pretrained_path: checkpoint to load (snapshot or original bare state_dict), strictly.
        cfg: keys of ``DEFAULT_CFG`` (missing ones take those defaults, unknown ones are an
            error): ``align`` (alignment loss in training), ``init_weights`` ('coco' | 'imagenet'
            | 'random' | None -> follows ``use_coco_init``), ``which_model`` ('dlfcn_res101' |
            'dlfcn_res50' | 'dlfcn_res18'), ``cls_name`` ('grid_proto'; None means it),
            ``proto_grid_size``, ``feature_hw``, ``reload_model_path``.

    When ``pretrained_path`` or ``cfg['reload_model_path']`` is set, no pretrained encoder
    weights are looked for (the checkpoint replaces them); only ``pretrained_path`` is loaded
    here (``reload_model_path`` may name several snapshots: the caller loads them with
    ``util.checkpoint.load_alpnet_weights``).

    Raises:
        ValueError: bad cfg or checkpoint (missing/unexpected keys named).
        models.backbone.MissingWeightsError: pretrained weights not in the torch hub cache.
    """

    def __init__(self, in_channels: int = 3, pretrained_path: str | os.PathLike | None = None,
                 cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"in_channels={in_channels}: the encoder takes 3-channel images")
        unknown = sorted(set(cfg or {}) - set(DEFAULT_CFG))
        if unknown:
            raise ValueError(f"unknown FewShotSeg cfg keys {unknown}; known: {list(DEFAULT_CFG)}")
        self.config = {**DEFAULT_CFG, **dict(cfg or {})}
        self.pretrained_path = pretrained_path
        cls_name = self.config["cls_name"] or "grid_proto"
        if cls_name not in CLS_NAMES:
            raise ValueError(f"cls_name/clsname={cls_name!r}: expected one of {CLS_NAMES}")
        if pretrained_path is not None or self.config["reload_model_path"]:
            init = "random"  # the checkpoint's weights replace any initialisation
        else:
            init = resolve_init(self.config["init_weights"], self.config["use_coco_init"])
        self.encoder = build_encoder(self.config["which_model"], init)
        grid = int(self.config["proto_grid_size"])
        self.cls_unit = MultiProtoAsConv(proto_grid=[grid, grid],
                                         feature_hw=list(self.config["feature_hw"]))
        # batch items whose alignment pass had no background prototype in the last forward
        self.align_failures: list[int] = []
        if pretrained_path is not None:
            load_alpnet_weights(self, pretrained_path)

    # ---------------------------------------------------------------- split inference
    def encode(self, imgs: torch.Tensor) -> torch.Tensor:
        """Encode images: N x 3 x H x W -> N x C x H' x W' features (C = 256, H' = H / 8).

        BatchNorm follows the module's mode: call it in ``eval()`` for inference.
        """
        if imgs.ndim != 4 or imgs.shape[1] != 3:
            raise ValueError(f"images must be N x 3 x H x W, got {tuple(imgs.shape)}")
        return self.encoder(imgs)

    def predict_from_features(self, supp_fts: torch.Tensor, fore_mask: torch.Tensor,
                              back_mask: torch.Tensor, qry_fts: torch.Tensor, val_wsize: int,
                              img_size: Sequence[int], *, isval: bool = True) -> torch.Tensor:
        """Query logits from encoded support and queries (1-way), equal to ``forward``'s.

        Args:
            supp_fts: Sh x Bs x C x H' x W' support features (``encode`` of the shots).
            fore_mask, back_mask: Sh x Bs x H x W support masks at image size (float/0-1).
            qry_fts: Bq x C x H' x W' query features.
            val_wsize: validation pooling window (2 in the protocol).
            img_size: (H, W) of the logits.
            isval: validation pooling (``val_wsize``); False uses the training window.
            Bs is 1 (one support for every query: prototypes computed once) or Bq (one each).
        Returns:
            Bq x 2 x H x W logits (background, foreground).
        Raises:
            EmptyPrototypeError: a background support without local prototype.
        """
        self._check_features(supp_fts, fore_mask, back_mask, qry_fts)
        fts_size = tuple(qry_fts.shape[-2:])
        res_fg = self.resize_masks(fore_mask, fts_size)
        res_bg = self.resize_masks(back_mask, fts_size)
        scores, _, _ = self._scores(supp_fts, res_fg, res_bg, qry_fts, isval, val_wsize, False)
        return F.interpolate(scores, size=tuple(img_size), mode="bilinear")

    @staticmethod
    def resize_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Bilinear resize (align_corners=False, as the original) of ... x H x W masks to ... x h x w."""
        lead = masks.shape[:-2]
        flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
        out = F.interpolate(flat, size=tuple(size), mode="bilinear")
        return out.reshape(*lead, *out.shape[-2:])

    # ---------------------------------------------------------------- original interface
    def forward(self, supp_imgs: Sequence[Sequence[torch.Tensor]],
                fore_mask: Sequence[Sequence[torch.Tensor]],
                back_mask: Sequence[Sequence[torch.Tensor]],
                qry_imgs: Sequence[torch.Tensor], isval: bool, val_wsize: int | None,
                show_viz: bool = False) -> tuple[torch.Tensor, torch.Tensor, list, torch.Tensor]:
        """One batch of episodes (kept for compatibility).

        Args:
            supp_imgs: way(1) x shot x [Bs x 3 x H x W] support images.
            fore_mask, back_mask: way(1) x shot x [Bs x H x W] support masks.
            qry_imgs: 1 x [B x 3 x H x W] query images (one query per episode).
            isval: validation pooling window ``val_wsize`` instead of the training one.
            val_wsize: that window (2 in the protocol).
            show_viz: also return the raw prototype similarities.
            Bs is B (each query its support) or 1 (one support for all queries).
        Returns:
            (logits B x 2 x H x W, alignment loss (0-dim tensor; 0 unless ``align`` and
            ``training``; the mean over the batch items, 0 for an item listed in
            ``self.align_failures``), [bg_sims, fg_sims] (lists with one n x K x H' x W'
            tensor per support item when ``show_viz``, else None), proto_assign
            B x 1 x H' x W' (index of the nearest background prototype, float)).
        Raises:
            ValueError: more than one way or query, inconsistent shapes.
            EmptyPrototypeError: a support background without any pooled cell above the
                threshold (the query pass: the episode cannot be computed).
        """
        n_ways, n_queries = len(supp_imgs), len(qry_imgs)
        if n_ways != 1 or n_queries != 1 or len(fore_mask) != 1 or len(back_mask) != 1:
            raise ValueError(f"FewShotSeg takes 1 way and 1 query per episode, got {n_ways} "
                             f"way(s), {n_queries} query(ies), {len(fore_mask)}/"
                             f"{len(back_mask)} mask way(s)")
        n_shots = len(supp_imgs[0])
        sizes = {tuple(x.shape) for x in supp_imgs[0]}
        if len(sizes) != 1:
            raise ValueError(f"every shot needs the same Bs x 3 x H x W, got {sorted(sizes)}")
        sup = torch.cat(list(supp_imgs[0]), dim=0)                # (Sh*Bs) x 3 x H x W
        qry = qry_imgs[0]                                         # B x 3 x H x W
        n_sb = sup.shape[0]
        img_size = tuple(supp_imgs[0][0].shape[-2:])
        fts = self.encode(torch.cat([sup, qry], dim=0))           # (Sh*Bs + B) x C x H' x W'
        supp_fts = fts[:n_sb].reshape(n_shots, n_sb // n_shots, *fts.shape[1:])
        # Sh x Bs x C x H' x W'
        qry_fts = fts[n_sb:]                                      # B x C x H' x W'
        fg = torch.stack(list(fore_mask[0]), dim=0)               # Sh x Bs x H x W
        bg = torch.stack(list(back_mask[0]), dim=0)               # Sh x Bs x H x W
        self._check_features(supp_fts, fg, bg, qry_fts)
        fts_size = tuple(fts.shape[-2:])
        scores, assign, sims = self._scores(supp_fts, self.resize_masks(fg, fts_size),
                                            self.resize_masks(bg, fts_size), qry_fts, isval,
                                            val_wsize, show_viz)   # B x 2 x H' x W'
        logits = F.interpolate(scores, size=img_size, mode="bilinear")   # B x 2 x H x W
        self.align_failures = []
        if self.config["align"] and self.training:
            align_loss, self.align_failures = self._alignment_loss(qry_fts, scores, supp_fts, fg, bg)
        else:
            align_loss = logits.new_zeros(())
        return logits, align_loss, sims, assign

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _check_features(supp_fts: torch.Tensor, fore_mask: torch.Tensor, back_mask: torch.Tensor,
                        qry_fts: torch.Tensor) -> None:
        if supp_fts.ndim != 5 or qry_fts.ndim != 4 or supp_fts.shape[2:] != qry_fts.shape[1:]:
            raise ValueError(f"support features must be Sh x Bs x C x H' x W' and query features "
                             f"Bq x C x H' x W' with the same C, H', W'; got "
                             f"{tuple(supp_fts.shape)} and {tuple(qry_fts.shape)}")
        n_shot, n_sb = supp_fts.shape[:2]
        if n_sb not in (1, qry_fts.shape[0]):
            raise ValueError(f"support batch {n_sb} must be 1 or the query batch "
                             f"{qry_fts.shape[0]}")
        for name, m in (("fore_mask", fore_mask), ("back_mask", back_mask)):
            if m.ndim != 4 or tuple(m.shape[:2]) != (n_shot, n_sb):
                raise ValueError(f"{name} must be Sh x Bs x H x W = ({n_shot}, {n_sb}, H, W), "
                                 f"got {tuple(m.shape)}")

    @staticmethod
    def _fg_modes(masks: torch.Tensor) -> list[str]:
        """Per episode: 'gridconv+' if the 4 x 4 average-pooled foreground (over all shots)
        reaches 0.95, else 'mask'. masks: E x Sh x 1 x H' x W'."""
        pooled = F.avg_pool2d(masks.flatten(0, 1), FG_MODE_POOL)     # (E*Sh) x 1 x h x w
        big = pooled.reshape(masks.shape[0], -1).amax(dim=1) >= FG_THRESH
        return [FG_PROT_MODE if b else "mask" for b in big.tolist()]

    def _two_scores(self, qry: torch.Tensor, sup_x: torch.Tensor, bg_y: torch.Tensor,
                    fg_y: torch.Tensor, isval: bool, val_wsize: int | None, vis: bool,
                    stage: str) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Background (``gridconv``) and foreground (mode per episode) scores.

        Args: qry E x Q x C x H' x W'; sup_x E x Sh x C x H' x W'; bg_y, fg_y E x Sh x 1 x H' x W'.
        Returns: (E x Q x 2 x H' x W' scores, E x Q x H' x W' background prototype assignment,
        [bg_sims, fg_sims] lists of E tensors, or [None, None]).
        """
        try:
            bg = self.cls_unit(qry, sup_x, bg_y, BG_PROT_MODE, BG_THRESH, isval, val_wsize, vis)
        except EmptyPrototypeError as err:
            log.debug("empty background prototypes: %s", err)
            raise EmptyPrototypeError(f"{err} (background of {stage}, episode(s) {err.episodes} of "
                                      "the batch)", episodes=err.episodes, max_pooled=err.max_pooled,
                                      thresh=err.thresh) from err
        modes = self._fg_modes(fg_y)
        fg_score, fg_sims = None, [None] * len(modes)
        for mode in sorted(set(modes)):
            idx = [e for e, m in enumerate(modes) if m == mode]
            if len(idx) == len(modes):
                fg = self.cls_unit(qry, sup_x, fg_y, mode, FG_THRESH, isval, val_wsize, vis)
                fg_score = fg.score
            else:  # episodes of each mode scored together, put back in batch order
                sel = torch.tensor(idx, device=qry.device)
                fg = self.cls_unit(qry[sel], sup_x[sel], fg_y[sel], mode, FG_THRESH, isval,
                                   val_wsize, vis)
                if fg_score is None:
                    fg_score = fg.score.new_zeros((len(modes), *fg.score.shape[1:]))
                fg_score = fg_score.index_copy(0, sel, fg.score)
            for i, e in enumerate(idx):
                fg_sims[e] = fg.raw_sims[i] if vis else None
        scores = torch.stack([bg.score, fg_score], dim=2)                 # E x Q x 2 x H' x W'
        return scores, bg.proto_assign, [bg.raw_sims, fg_sims] if vis else [None, None]

    def _scores(self, supp_fts: torch.Tensor, res_fg: torch.Tensor, res_bg: torch.Tensor,
                qry_fts: torch.Tensor, isval: bool, val_wsize: int | None,
                vis: bool) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Query scores at the feature size.

        Args: supp_fts Sh x Bs x C x H' x W'; res_fg, res_bg Sh x Bs x H' x W'; qry_fts
        Bq x C x H' x W'. Bs = 1: one episode of Bq queries; Bs = Bq: Bq episodes of 1 query.
        Returns: (Bq x 2 x H' x W' scores, Bq x 1 x H' x W' background prototype assignment,
        [bg_sims, fg_sims] lists (one tensor n x K x H' x W' per support item) or [None, None]).
        """
        n_q, n_sb = qry_fts.shape[0], supp_fts.shape[1]
        qry = qry_fts.unsqueeze(0) if n_sb == 1 else qry_fts.unsqueeze(1)  # E x Q x C x H' x W'
        sup_x = supp_fts.transpose(0, 1)                                  # E x Sh x C x H' x W'
        bg_y = res_bg.transpose(0, 1).unsqueeze(2)                        # E x Sh x 1 x H' x W'
        fg_y = res_fg.transpose(0, 1).unsqueeze(2)
        scores, assign, sims = self._two_scores(qry, sup_x, bg_y, fg_y, isval, val_wsize, vis,
                                                "the support (query pass)")
        fts_hw = scores.shape[-2:]
        return scores.reshape(n_q, 2, *fts_hw), assign.reshape(n_q, 1, *fts_hw), sims

    def _alignment_loss(self, qry_fts: torch.Tensor, scores: torch.Tensor,
                        supp_fts: torch.Tensor, fore_mask: torch.Tensor,
                        back_mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """PANet prototype alignment (docs/method.md, 'Model (ALPNet)'): segment each support with
        the query's predicted masks as "support"; cross-entropy against the support label (1 in the
        fg mask, 0 in the bg mask, ignored elsewhere), / shots / ways; the mean over the batch items.

        An item whose predicted query background has no pooled cell above the threshold has no
        background prototype: its loss is 0 (it still counts in the mean) and it is listed.

        Args: qry_fts B x C x H' x W'; scores B x 2 x H' x W' (before upsampling); supp_fts
        Sh x Bs x C x H' x W'; fore_mask, back_mask Sh x Bs x H x W.
        Returns: (the loss, 0-dim float32; the indices of the items without background prototype).
        """
        n_ways = 1
        n_shots = supp_fts.shape[0]
        n_q = qry_fts.shape[0]
        fts_size = tuple(supp_fts.shape[-2:])
        pred = scores.argmax(dim=1, keepdim=True)                         # B x 1 x H' x W'
        q_bg = self.resize_masks((pred == 0).float(), fts_size)[:, None]  # B x 1 x 1 x H' x W'
        q_fg = self.resize_masks((pred == 1).float(), fts_size)[:, None]
        ok = self.cls_unit.has_local_prototype(q_bg, BG_THRESH, False, None)   # B bool
        failed = (~ok).nonzero().flatten().tolist()
        losses = scores.new_zeros(n_q, dtype=torch.float32)               # B
        if failed:
            log.info("alignment loss 0 for episode(s) %s of the batch: the query's predicted "
                     "background has no pooled cell above %s", failed, BG_THRESH)
        if len(failed) == n_q:
            return losses.mean(), failed
        keep = ok.nonzero().flatten() if failed else None                 # K kept items
        # episode b: the shots of support b are the queries, query b the support
        shots = supp_fts.transpose(0, 1).expand(n_q, -1, -1, -1, -1)     # B x Sh x C x H' x W'
        fg = fore_mask.transpose(0, 1).expand(n_q, -1, -1, -1)           # B x Sh x H x W
        bg = back_mask.transpose(0, 1).expand(n_q, -1, -1, -1)
        qry = qry_fts
        if keep is not None:
            shots, fg, bg, qry, q_bg, q_fg = (t[keep] for t in (shots, fg, bg, qry, q_bg, q_fg))
        n_k = qry.shape[0]
        supp_scores, _, _ = self._two_scores(shots, qry[:, None], q_bg, q_fg, False, None,
                                             False, "the predicted query (alignment pass)")
        img_size = tuple(fore_mask.shape[-2:])
        supp_pred = F.interpolate(supp_scores.flatten(0, 1), size=img_size, mode="bilinear")
        # (K*Sh) x 2 x H x W
        fg, bg = fg.flatten(0, 1), bg.flatten(0, 1)                        # (K*Sh) x H x W
        label = torch.full(fg.shape, IGNORE_INDEX, dtype=torch.long, device=fg.device)
        label[fg == 1] = 1
        label[bg == 1] = 0
        pixel_loss = F.cross_entropy(supp_pred, label, ignore_index=IGNORE_INDEX,
                                     reduction="none")                      # (K*Sh) x H x W
        # mean over each support's labelled pixels (F.cross_entropy's 'mean'; NaN without any)
        per_support = pixel_loss.sum(dim=(1, 2)) / (label != IGNORE_INDEX).sum(dim=(1, 2))
        per_item = per_support.reshape(n_k, n_shots).sum(dim=1) / n_shots / n_ways   # K
        losses = per_item if keep is None else losses.index_copy(0, keep, per_item)
        return losses.mean(), failed
