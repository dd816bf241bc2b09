"""Self-supervised (and supervised-baseline) training of ALPNet (docs/method.md,
'Loss and optimisation'; docs/training.md).

Phases are module-level functions with their state passed in: ``build_criterion``/``loss``,
``build_optimizer``, ``build_scheduler``, ``train_step`` and the loop ``train``. ``training.py``
only wires the Sacred config into ``train``.

Per step (``train_step``): forward (autocast in ``bf16``), weighted cross-entropy on the query
plus the alignment loss, then the ranks agree on three flags in one all-reduce: the query pass
failed (the model's explicit empty-prototype error: skipped on every rank, scheduler not stepped,
as the reference; a failed alignment pass only zeroes that episode's alignment loss), the loss
is not finite (the run stops, naming the step), a stop signal arrived (rank 0 saves after this
step, all exit). Then backward, SGD step, MultiStepLR step.

Effective batch = ``batch_size`` x world size; the learning rate is not scaled (DDP averages the
gradients), so one GPU with ``batch_size=1`` is exactly the reference's setting. Each episode's
support and query form one BatchNorm batch per rank, as in the original.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from dataloaders.episodes import build_training_dataset, episode_loader
from util.backends import apply_compute_settings
from util.checkpoint import load_alpnet_weights, save_snapshot, to_plain
from util.figures import plot_loss_curves
from util.distributed import DistInfo, broadcast_object, is_dist, unwrap, wrap_ddp
from util.resume import SNAPSHOT_DIR, TrainState, find_resume_snapshot, restore_snapshot, resume_path
from util.rng import rng_states, seed_everything
from util.run_record import record_snapshot
from util.signals import StopFlag

__all__ = ["WCE_WEIGHTS", "build_criterion", "loss", "build_optimizer", "build_scheduler",
           "episode_inputs", "agree_flags", "train_step", "episode_errors", "find_resume_snapshot",
           "NonFiniteLossError", "TrainState", "train", "SNAPSHOT_DIR", "CURVES_PNG"]

log = logging.getLogger(__name__)

WCE_WEIGHTS = (0.05, 1.0)      # class weights (background, foreground) with use_wce
CURVES_PNG = "loss_curves.png"
TQDM_MININTERVAL_S = 5.0
MAX_CONSECUTIVE_SKIPS = 100    # failed batches in a row before the run gives up with an error


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops and keeps its last good snapshot."""


def episode_errors() -> tuple[type[BaseException], ...]:
    """The model's explicit "this episode cannot be computed" errors (skipped, counted)."""
    from models.grid_proto_fewshot import EmptyPrototypeError
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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(supp, fg, bg, qry, isval=False, val_wsize=None)
        total, query, align = loss(out[0], labels, out[1], criterion)
        values = torch.stack([query.detach(), align.detach().reshape(())]).tolist()
        align_failed = list(getattr(unwrap(model), "align_failures", []))
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


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """``FewShotSeg(in_channels=3, pretrained_path=None, cfg=cfg['model'])``."""
    from models.grid_proto_fewshot import FewShotSeg
    return FewShotSeg(in_channels=3, pretrained_path=None, cfg=to_plain(cfg["model"], "model"))


class _Interval:
    """True means of ``loss``/``align_loss`` over the steps since the last print (the original
    divided by ``print_interval`` whatever the count), and every step's values of this process for the loss curves."""

    def __init__(self) -> None:
        self.sums, self.n = [0.0, 0.0], 0
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {"loss": [], "align_loss": []}

    def add(self, step: int, loss_v: float, align_v: float) -> None:
        self.sums[0] += loss_v
        self.sums[1] += align_v
        self.n += 1
        self.steps.append(step)
        self.values["loss"].append(loss_v)
        self.values["align_loss"].append(align_v)

    def flush(self) -> tuple[float, float]:
        means = (self.sums[0] / max(self.n, 1), self.sums[1] / max(self.n, 1))
        self.sums, self.n = [0.0, 0.0], 0
        return means

    def plot(self, target: Path) -> None:
        if self.steps:
            plot_loss_curves(self.values, target, steps={k: self.steps for k in self.values})


def train(cfg: Mapping[str, Any], *, card: Any, data_dir: str | Path, train_ids: Sequence[int],
          info: DistInfo, run: Any = None, run_dir: str | Path | None = None,
          experiment_dir: str | Path | None = None,
          model_factory: Callable[[Mapping[str, Any]], nn.Module] | None = None) -> dict[str, Any]:
    """Train for exactly ``n_steps`` optimizer steps (or until a stop signal).

    Args:
        cfg: the Sacred config (validated by ``util.config_check``).
        card, data_dir, train_ids: the dataset and the training scans of the fold.
        info: this process's rank, world size and device.
        run: the Sacred run (``log_scalar``, ``info``) on rank 0; None elsewhere.
        run_dir: the run directory (rank 0 writes ``snapshots/`` and the curves there).
        experiment_dir: ``<log_dir>/mySSL_<exp_str>`` (searched by ``resume=True``).
        model_factory: builds the model from the config (default ``FewShotSeg``).
    Returns:
        ``status`` ('completed' | 'stopped'), ``step``, ``n_steps``, ``snapshot``, skipped and
        empty-mask episode counts; when stopped also ``stopped_by`` (the signal) and
        ``resume_from`` (the snapshot to continue from).
    Raises:
        NonFiniteLossError: a NaN/inf loss (names the step and the last good snapshot).
    """
    device, is_main = info.device, info.rank == 0
    if device.type == "cpu":
        log.info("no GPU in use: training on the CPU")
    # strict on the CPU, warn-only on GPUs; cudnn.benchmark per backend; restored afterwards
    restore_settings = apply_compute_settings(deterministic=bool(cfg["deterministic"]), device=device)
    try:
        resume = resume_path(cfg, Path(experiment_dir) if experiment_dir else None, is_main)
        build_cfg = cfg
        if resume is not None or cfg.get("reload_model_path"):
            # the checkpoint replaces the initial weights: do not look for pretrained files
            build_cfg = {**cfg, "model": {**cfg["model"], "init_weights": "random"}}
        seed_everything(int(cfg["seed"]))
        model = (model_factory or build_model)(build_cfg).to(device)
        model.train()
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg)
        state = TrainState()
        if resume is not None:
            state = restore_snapshot(resume, model, optimizer, scheduler, cfg)
        elif cfg.get("reload_model_path"):
            load_alpnet_weights(model, cfg["reload_model_path"])     # fine-tuning start
        dataset = build_training_dataset(cfg, card, data_dir=str(data_dir), train_ids=train_ids,
                                         rank=info.rank)
        net = wrap_ddp(model, info)
        return _loop(cfg, net, optimizer, scheduler, dataset, state, info=info, run=run,
                     run_dir=Path(run_dir) if (run_dir and is_main) else None)
    finally:
        restore_settings()


def _loop(cfg: Mapping[str, Any], net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
          dataset: Any, state: TrainState, *, info: DistInfo, run: Any,
          run_dir: Path | None) -> dict[str, Any]:
    device, is_main = info.device, info.rank == 0
    n_steps, batch = int(cfg["n_steps"]), int(cfg["batch_size"])
    every, print_every = int(cfg["save_snapshot_every"]), int(cfg["print_interval"])
    criterion = build_criterion(use_wce=bool(cfg["use_wce"]), ignore_label=int(cfg["ignore_label"]),
                                device=device)
    skip_errors = episode_errors()
    if is_main and run_dir is None:
        log.warning("no run directory (no FileStorageObserver): snapshots are not written")
    log.info("training %d steps from step %d: batch_size %d x %d rank(s) = effective batch %d, "
             "lr %g (not scaled)", n_steps, state.step, batch, info.world_size,
             batch * info.world_size, float(cfg["optim"]["lr"]))
    n_epochs = math.ceil(n_steps * batch / max(len(dataset), 1))
    interval, epoch = _Interval(), None

    def save() -> Path | None:
        if run_dir is None:
            return None
        path = save_snapshot(run_dir / SNAPSHOT_DIR / f"{state.step}.pth", model=net,
                             optimizer=optimizer, scheduler=scheduler, step=state.step,
                             rng={**rng_states(), "stream": state.stream()}, config=cfg)
        interval.plot(run_dir / CURVES_PNG)
        state.last_snapshot = path
        record_snapshot(run, state.step, path)                  # info.json: steps and paths
        return path

    loader = episode_loader(dataset, start=state.next_episode, batch_size=batch,
                            num_workers=int(cfg["num_workers"]), pin_memory=device.type == "cuda")
    it = iter(loader)
    saved_at = state.step if state.last_snapshot is not None else -1
    stopped: str | None = None
    consecutive = 0
    align_zeroed = 0     # this rank's episodes whose alignment loss was 0 (no predicted background)
    bar = tqdm(total=n_steps, initial=state.step, disable=not is_main, unit="step", desc="train",
               mininterval=TQDM_MININTERVAL_S, file=sys.stderr)
    try:
        with StopFlag() as stop:
            while state.step < n_steps:
                episode = next(it)
                ep = int(episode["epoch"][0]) if "epoch" in episode else 0
                if ep != epoch:
                    if epoch is not None:
                        log.info("###### Reloading dataset ######")
                    log.info("###### This is epoch %d of %d epoches ######", ep, n_epochs)
                    epoch = ep
                try:
                    res = train_step(net, episode, optimizer, scheduler, criterion=criterion,
                                     device=device, precision=cfg["precision"],
                                     stop_requested=lambda: stop.requested, skip_errors=skip_errors)
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(
                        f"non-finite loss at step {state.step + 1}: {err}; training stopped, the last "
                        f"good snapshot is {state.last_snapshot or 'none (none saved yet)'}") from err
                state.next_episode += batch
                if res["skipped"]:
                    state.skipped += batch
                    consecutive += 1
                    if consecutive >= MAX_CONSECUTIVE_SKIPS:
                        raise RuntimeError(
                            f"{consecutive} consecutive batches failed with the model's empty-"
                            f"prototype error at step {state.step + 1}: the pseudolabel masks are too "
                            "large for the prototype grid (check superpixel sizes, input size and "
                            "proto_grid_size)")
                else:
                    consecutive = 0
                    align_zeroed += int(res.get("align_failed", 0))
                    state.step += 1
                    state.empty += int(torch.as_tensor(episode.get("empty_mask", 0)).sum())
                    interval.add(state.step, res["loss"], res["align_loss"])
                    if run is not None:
                        run.log_scalar("loss", res["loss"], state.step)
                        run.log_scalar("align_loss", res["align_loss"], state.step)
                    bar.update(1)
                    if state.step % print_every == 0 or state.step == n_steps or res["stop"]:
                        mean_l, mean_a = interval.flush()       # the last interval is logged too
                        log.info("step %d: loss: %s, align_loss: %s,", state.step, mean_l, mean_a)
                    if state.step % every == 0 or state.step == n_steps:
                        save()
                        saved_at = state.step
                if res["stop"]:
                    stopped = stop.signal_name or "a signal on another rank"
                    break
    finally:
        bar.close()
        del it
    if stopped is not None and saved_at != state.step:
        save()
    state.last_snapshot = broadcast_object(state.last_snapshot)   # every rank names rank 0's file
    if run_dir is not None:
        interval.plot(run_dir / CURVES_PNG)
    result = {"status": "stopped" if stopped else "completed", "step": state.step,
              "snapshot": str(state.last_snapshot) if state.last_snapshot else None,
              "skipped_episodes": state.skipped, "empty_mask_episodes": state.empty,
              "align_zeroed_episodes": align_zeroed,
              "episodes_drawn": state.next_episode, "n_steps": n_steps}
    log.info("%d episode(s) skipped (model error), %d trained episode(s) had an empty superpixel mask, "
             "%d had alignment loss 0 (no predicted background; this rank, this session)",
             state.skipped, state.empty, align_zeroed)
    if stopped:
        # the entry point turns this into an INTERRUPTED run and prints the resume command
        # (util.signals.raise_if_stopped)
        result.update(stopped_by=stopped, resume_from=result["snapshot"])
        log.info("stopped by %s after step %d of %d; snapshot %s (resume_from=<it>, or resume=True "
                 "for the newest snapshot of the experiment)", stopped, state.step, n_steps,
                 state.last_snapshot)
    if run is not None:
        run.info["training"] = dict(result)
    return result
