"""One optimizer step of ALPNet and its parts (docs/method.md, 'Loss and optimisation').

Phases are module-level functions with their state passed in: ``build_criterion``/``loss``,
``build_optimizer``, ``build_scheduler`` and ``train_step``.

Per step (``train_step``): forward (autocast in ``bf16``), weighted cross-entropy on the query
plus the alignment loss, then the ranks agree on three flags in one all-reduce: the query pass
failed (the model's explicit empty-prototype error: skipped on every rank, scheduler not stepped,
as the reference; a failed alignment pass only zeroes that episode's alignment loss), the loss
is not finite (the run stops, naming the step), a stop signal arrived (rank 0 saves after this
step, all exit). Then backward, SGD step, MultiStepLR step.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from models.alpmodule import EmptyPrototypeError
from util.backends import autocast
from util.checkpoint import unwrap_model
from util.distributed import is_dist

__all__ = ["WCE_WEIGHTS", "build_criterion", "loss", "build_optimizer", "build_scheduler",
           "episode_inputs", "agree_flags", "train_step", "episode_errors", "NonFiniteLossError"]

log = logging.getLogger(__name__)


WCE_WEIGHTS = (0.05, 1.0)      # class weights (background, foreground) with use_wce


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops and keeps its last good snapshot."""


def episode_errors() -> tuple[type[BaseException], ...]:
    """The model's explicit "this episode cannot be computed" errors (skipped, counted)."""
    return (EmptyPrototypeError,)


def build_criterion(*, use_wce: bool, ignore_label: int, device: torch.device) -> nn.CrossEntropyLoss:
    """Cross-entropy with weights [0.05, 1.0] (``use_wce``) and ``ignore_index=ignore_label``;
    PyTorch's weighted mean ``sum(w * l) / sum(w)`` (as the original)."""
    weight = torch.tensor(WCE_WEIGHTS, dtype=torch.float32, device=device) if use_wce else None
    return nn.CrossEntropyLoss(weight=weight, ignore_index=int(ignore_label))


def loss(logits: torch.Tensor, labels: torch.Tensor, align_loss: torch.Tensor | float,
         criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, query, align) losses: ``query = criterion(logits, labels)``, ``total = query + align``.

    Args:
        logits: (n_queries B) x 2 x H x W query scores; labels: (n_queries B) x H x W int64.
        align_loss: the model's alignment loss (0 when ``usealign`` is off).
    """
    query = criterion(logits.float(), labels)
    align = (align_loss.float() if isinstance(align_loss, torch.Tensor)
             else torch.tensor(float(align_loss), device=query.device))
    return query + align, query, align


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD with the config's ``optim`` (lr, momentum, weight_decay).

    The fused implementation is used where this torch has it (same update rule; on the CPU the
    per-parameter loop took several times longer than the fused kernel for ResNet-101's 43 M
    parameters); older versions fall back to the default one.
    """
    o = cfg["optim"]
    kwargs = dict(lr=float(o["lr"]), momentum=float(o["momentum"]), weight_decay=float(o["weight_decay"]))
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.SGD(params, fused=True, **kwargs)
    except (TypeError, RuntimeError) as err:     # torch without fused SGD for this device
        log.info("fused SGD unavailable (%s): using the default implementation", err)
        return torch.optim.SGD(params, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any]) -> torch.optim.lr_scheduler.MultiStepLR:
    """MultiStepLR at ``lr_milestones`` with ``gamma = lr_step_gamma``."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[int(m) for m in cfg["lr_milestones"]], gamma=float(cfg["lr_step_gamma"]))


def episode_inputs(batch: Mapping[str, Any], device: torch.device) -> tuple[list, list, list, list, torch.Tensor]:
    """Collated episodes -> the model's lists on ``device``.

    Returns (support images way x shot x [B x 3 x H x W], fg masks way x shot x [B x H x W],
    bg masks (same), query images n_queries x [B x 3 x H x W], query labels (n_queries B) x H x W).
    """
    nb = device.type == "cuda"
    supp = [[s.to(device, non_blocking=nb) for s in way] for way in batch["support_images"]]
    fg = [[m["fg_mask"].float().to(device, non_blocking=nb) for m in way] for way in batch["support_mask"]]
    bg = [[m["bg_mask"].float().to(device, non_blocking=nb) for m in way] for way in batch["support_mask"]]
    qry = [q.to(device, non_blocking=nb) for q in batch["query_images"]]
    labels = torch.cat([q.long().to(device, non_blocking=nb) for q in batch["query_labels"]], dim=0)
    return supp, fg, bg, qry, labels


def agree_flags(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """Each flag true on every rank when it is true on any rank (one all-reduce MAX)."""
    if not is_dist():
        return [bool(f) for f in flags]
    import torch.distributed as dist
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def train_step(model: nn.Module, episode: Mapping[str, Any], optimizer: torch.optim.Optimizer,
               scheduler: Any, *, criterion: nn.Module, device: torch.device,
               precision: str = "fp32", stop_requested: bool | Callable[[], bool] = False,
               skip_errors: tuple[type[BaseException], ...] = ()) -> dict[str, float]:
    """One optimizer step on one batch of episodes (all ranks call it together).

    ``stop_requested`` (a bool, or a callable read after the forward) joins the flags the ranks
    agree on, so a signal that arrives during the step stops training after it.

    Only the query pass can fail a step (``skip_errors``: the support's background has no local
    prototype). An episode whose *alignment* pass has no background prototype (its query predicted
    foreground almost everywhere, frequent early in training) only gets alignment loss 0: the step
    is taken with every episode's query loss and the other episodes' alignment losses, so
    failures do not multiply with the number of ranks.

    Returns:
        ``loss`` (query cross-entropy), ``align_loss``, ``skipped`` (1.0: a query pass failed on
        some rank, nothing was updated), ``stop`` (1.0: a stop was requested on some rank),
        ``align_failed`` (episodes of this rank whose alignment loss was zeroed).
    Raises:
        NonFiniteLossError: the loss is NaN/inf on some rank (before any update).
    """
    supp, fg, bg, qry, labels = episode_inputs(episode, device)
    optimizer.zero_grad(set_to_none=True)
    failed, values, total, align_failed = False, [math.nan, math.nan], None, []
    try:
        with autocast(device, precision):
            out = model(supp, fg, bg, qry, isval=False, val_wsize=None)
        total, query, align = loss(out[0], labels, out[1], criterion)
        values = torch.stack([query.detach(), align.detach().reshape(())]).tolist()
        align_failed = list(getattr(unwrap_model(model), "align_failures", []))
        if align_failed:
            indices = _indices(episode)
            log.info("alignment loss 0 for episode(s) %s (no background prototype in the "
                     "predicted query)", [indices[i] if i < len(indices) else i for i in align_failed])
    except skip_errors as err:          # the model's explicit, documented failure only
        failed = True
        log.warning("episode(s) %s skipped: %s", _indices(episode), err)
    nonfinite = not failed and not all(math.isfinite(v) for v in values)
    stop_now = stop_requested() if callable(stop_requested) else stop_requested
    failed, nonfinite, stop = agree_flags([failed, nonfinite, stop_now], device)
    if nonfinite:
        raise NonFiniteLossError(f"loss {values[0]}, align_loss {values[1]} on episode(s) "
                                 f"{_indices(episode)}")
    if failed:
        return {"loss": math.nan, "align_loss": math.nan, "skipped": 1.0, "stop": float(stop),
                "align_failed": 0.0}
    total.backward()
    optimizer.step()
    scheduler.step()
    return {"loss": values[0], "align_loss": values[1], "skipped": 0.0, "stop": float(stop),
            "align_failed": float(len(align_failed))}


def _indices(episode: Mapping[str, Any]) -> list[int]:
    idx = episode.get("index")
    return [int(i) for i in idx] if isinstance(idx, torch.Tensor) else [idx]
