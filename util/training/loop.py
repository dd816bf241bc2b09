"""The training loop of ALPNet (docs/training.md): build, resume, then exactly ``n_steps``
optimizer steps (or until a stop signal), each step's concerns in hooks (``util.training.hooks``).

The step itself (``util.training.step.train_step``: forward, losses, the flags the ranks agree
on, the update) and resumption (``util.training.resume``) live beside it. ``training.py`` only
wires the Sacred config into :func:`train`.

Effective batch = ``batch_size`` x world size; the learning rate is not scaled (DDP averages the
gradients), so one GPU with ``batch_size=1`` is exactly the reference's setting. Each episode's
support and query form one BatchNorm batch per rank, as in the original.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from dataloaders.episodes import episode_loader
from dataloaders.training_set import build_training_dataset
from models.builder import build_model
from util.backends import apply_compute_settings, compile_problem, precision_note
from util.checkpoint import load_alpnet_weights, save_snapshot
from util.distributed import DistInfo, broadcast_object, wrap_ddp
from util.experiment.run_record import record_snapshot
from util.rng import rng_states, seed_everything
from util.signals import stop_requests
from util.tensorboard_log import TENSORBOARD_KEY, open_writer, purge_after
from util.training.hooks import (
    EpochMessages,
    Hooks,
    IntervalLog,
    LossCurves,
    ProgressBar,
    SacredScalars,
    Snapshots,
    TensorBoardScalars,
)
from util.training.resume import SNAPSHOT_DIR, TrainState, restore_snapshot, resume_path
from util.training.step import (
    NonFiniteLossError,
    build_criterion,
    build_optimizer,
    build_scheduler,
    episode_errors,
    train_step,
)

__all__ = ["train", "compile_encoder", "record_continuation", "CURVES_PNG", "MAX_CONSECUTIVE_SKIPS"]

log = logging.getLogger(__name__)

CURVES_PNG = "loss_curves.png"
MAX_CONSECUTIVE_SKIPS = 100    # failed batches in a row before the run gives up with an error


def train(cfg: Mapping[str, Any], *, card: Any, data_dir: str | Path, train_ids: Sequence[int],
          info: DistInfo, run: Any = None, run_dir: str | Path | None = None,
          experiment_dir: str | Path | None = None,
          model_factory: Callable[..., nn.Module] | None = None) -> dict[str, Any]:
    """Train for exactly ``n_steps`` optimizer steps (or until a stop signal).

    Args:
        cfg: the Sacred config (validated by ``util.experiment.config_check``).
        card, data_dir, train_ids: the dataset and the training scans of the fold.
        info: this process's rank, world size and device.
        run: the Sacred run (``log_scalar``, ``info``) on rank 0; None elsewhere.
        run_dir: the run directory (rank 0 writes ``snapshots/`` and the curves there).
        experiment_dir: ``<log_dir>/mySSL_<exp_str>`` (searched by ``resume=True``).
        model_factory: ``(model_cfg, *, pretrained) -> nn.Module`` (default
            ``models.builder.build_model``).
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
    log.info("%s", precision_note(device, str(cfg["precision"])))
    # strict on the CPU, warn-only on GPUs; cudnn.benchmark per backend; restored afterwards
    restore_settings = apply_compute_settings(deterministic=bool(cfg["deterministic"]), device=device)
    try:
        resume = resume_path(cfg, Path(experiment_dir) if experiment_dir else None, is_main)
        seed_everything(int(cfg["seed"]))
        # a checkpoint replaces the initial weights: no pretrained file is looked for then
        pretrained = resume is None and not cfg.get("reload_model_path")
        model = (model_factory or build_model)(cfg["model"], pretrained=pretrained).to(device)
        model.train()
        if cfg.get("compile", False):
            compile_encoder(model, device)
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg)
        state = TrainState()
        if resume is not None:
            state = restore_snapshot(resume, model, optimizer, scheduler, cfg)
            record_continuation(cfg, resume, state.step, run if is_main else None)
        elif cfg.get("reload_model_path"):
            load_alpnet_weights(model, cfg["reload_model_path"])     # fine-tuning start
        dataset = build_training_dataset(cfg, card, data_dir=str(data_dir), train_ids=train_ids,
                                         rank=info.rank)
        net = wrap_ddp(model, info)
        return _run_loop(cfg, net, optimizer, scheduler, dataset, state, info=info, run=run,
                         run_dir=Path(run_dir) if (run_dir and is_main) else None)
    finally:
        restore_settings()


def compile_encoder(model: nn.Module, device: torch.device) -> None:
    """``torch.compile`` the encoder in place (``Module.compile``: parameter names, snapshots and
    DDP are unchanged; the first steps compile, later ones run the compiled code).

    Raises:
        RuntimeError: compilation cannot run here (says why).
    """
    problem = compile_problem(device)
    if problem:
        raise RuntimeError(f"compile=True: {problem}")
    log.info("compile=True: the encoder is compiled at its first steps (a minute or more on a CPU)")
    model.encoder.compile()


@dataclasses.dataclass
class _Counts:
    """What this rank's session of the loop counted besides the steps."""
    consecutive_skips: int = 0
    align_zeroed: int = 0      # episodes whose alignment loss was 0 (no predicted background)


def _snapshot_saver(cfg: Mapping[str, Any], net: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: TrainState, run: Any, run_dir: Path | None,
                    curves: LossCurves) -> Callable[[int], Path | None]:
    """``save(step)``: the snapshot ``<run_dir>/snapshots/<step>.pth``, the loss curves and the
    run's info.json record (rank 0; no run directory: nothing)."""
    def save(step: int) -> Path | None:
        if run_dir is None:
            return None
        path = save_snapshot(run_dir / SNAPSHOT_DIR / f"{step}.pth", model=net, optimizer=optimizer,
                             scheduler=scheduler, step=step,
                             rng={**rng_states(), "stream": state.stream()}, config=cfg)
        curves.plot()
        state.last_snapshot = path
        record_snapshot(run, step, path)                        # info.json: steps and paths
        return path
    return save


def _hooks(cfg: Mapping[str, Any], n_epochs: int, state: TrainState, is_main: bool, run: Any,
           run_dir: Path | None, save_factory: Callable[[LossCurves], Callable[[int], Any]],
           tensorboard: TensorBoardScalars | None = None) -> Hooks:
    n_steps = int(cfg["n_steps"])
    curves = LossCurves(run_dir / CURVES_PNG if run_dir is not None else None)
    saved_at = state.step if state.last_snapshot is not None else -1
    # order matters: the curves hold a step before the snapshot of that step draws them
    return Hooks([EpochMessages(n_epochs), ProgressBar(n_steps, state.step, enabled=is_main),
                  IntervalLog(int(cfg["print_interval"]), n_steps), SacredScalars(run),
                  *([tensorboard] if tensorboard is not None else []), curves,
                  Snapshots(int(cfg["save_snapshot_every"]), n_steps, save_factory(curves),
                            saved_at=saved_at)])


def _tensorboard(cfg: Mapping[str, Any], run_dir: Path | None, optimizer: torch.optim.Optimizer,
                 state: TrainState, episodes_per_step: int) -> TensorBoardScalars | None:
    """The TensorBoard hook on ``run_dir`` (rank 0 with a run directory and ``tensorboard`` on)."""
    writer = open_writer(run_dir, enabled=bool(cfg.get(TENSORBOARD_KEY, True)))
    if writer is None:
        return None
    return TensorBoardScalars(writer, lr=lambda: optimizer.param_groups[0]["lr"],
                              counts=lambda: {"skipped": state.skipped, "empty_mask": state.empty},
                              episodes_per_step=episodes_per_step)


def record_continuation(cfg: Mapping[str, Any], snapshot: Path, step: int, run: Any) -> dict[str, Any]:
    """What a resumed run continues: ``run.info['continues']`` (``info.json``) holds the snapshot,
    its step and, for a snapshot of a run folder (``<run>/snapshots/<step>.pth``), that folder;
    the folder's TensorBoard steps after ``step`` are marked void (``util.tensorboard_log.purge_after``)
    so that every step is shown once. Rank 0 (``run`` not None) only."""
    snapshot = Path(snapshot).resolve()
    folder = snapshot.parent.parent if snapshot.parent.name == SNAPSHOT_DIR else None
    record = {"snapshot": str(snapshot), "step": int(step),
              "run_dir": str(folder) if folder is not None else None}
    if run is not None:
        run.info["continues"] = record
        if folder is not None and cfg.get(TENSORBOARD_KEY, True):
            purge_after(folder, step)
    return record


def _count(res: Mapping[str, float], episode: Mapping[str, Any], state: TrainState, counts: _Counts,
           batch: int) -> bool:
    """Move the counters on after one step; True when it updated the weights.

    Raises:
        RuntimeError: ``MAX_CONSECUTIVE_SKIPS`` batches in a row failed.
    """
    state.next_episode += batch
    if res["skipped"]:
        state.skipped += batch
        counts.consecutive_skips += 1
        if counts.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            raise RuntimeError(
                f"{counts.consecutive_skips} consecutive batches failed with the model's empty-"
                f"prototype error at step {state.step + 1}: the pseudolabel masks are too "
                "large for the prototype grid (check superpixel sizes, input size and "
                "proto_grid_size)")
        return False
    counts.consecutive_skips = 0
    counts.align_zeroed += int(res.get("align_failed", 0))
    state.step += 1
    state.empty += int(torch.as_tensor(episode.get("empty_mask", 0)).sum())
    return True


StepFn = Callable[[Mapping[str, Any], Callable[[], bool]], Mapping[str, float]]


def _steps(episodes: Iterator[Mapping[str, Any]], step_fn: StepFn,
           state: TrainState, counts: _Counts, hooks: Hooks, n_steps: int, batch: int) -> str | None:
    """The loop: steps until ``n_steps`` or an agreed stop; the name of what stopped it, or None."""
    with stop_requests() as stop:     # the entry point's flag when it installed one
        while state.step < n_steps:
            episode = next(episodes)
            hooks.on_episode(episode)
            try:
                res = step_fn(episode, lambda: stop.requested)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(
                    f"non-finite loss at step {state.step + 1}: {err}; training stopped, the last "
                    f"good snapshot is {state.last_snapshot or 'none (none saved yet)'}") from err
            if _count(res, episode, state, counts, batch):
                hooks.after_step(state.step, res)
            if res["stop"]:
                hooks.on_stop(state.step)
                return stop.signal_name or "a signal on another rank"
    return None


def _run_loop(cfg: Mapping[str, Any], net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
              dataset: Any, state: TrainState, *, info: DistInfo, run: Any,
              run_dir: Path | None) -> dict[str, Any]:
    device, is_main = info.device, info.rank == 0
    n_steps, batch = int(cfg["n_steps"]), int(cfg["batch_size"])
    criterion = build_criterion(use_wce=bool(cfg["use_wce"]), ignore_label=int(cfg["ignore_label"]),
                                device=device)
    skip_errors = episode_errors()
    if is_main and run_dir is None:
        log.warning("no run directory (no FileStorageObserver): snapshots are not written")
    log.info("training %d steps from step %d: batch_size %d x %d rank(s) = effective batch %d, "
             "lr %g (not scaled)", n_steps, state.step, batch, info.world_size,
             batch * info.world_size, float(cfg["optim"]["lr"]))
    n_epochs = math.ceil(n_steps * batch / max(len(dataset), 1))
    hooks = _hooks(cfg, n_epochs, state, is_main, run, run_dir,
                   lambda curves: _snapshot_saver(cfg, net, optimizer, scheduler, state, run, run_dir, curves),
                   _tensorboard(cfg, run_dir, optimizer, state, batch * info.world_size))

    def step_fn(episode: Mapping[str, Any], stop_requested: Callable[[], bool]) -> Mapping[str, float]:
        return train_step(net, episode, optimizer, scheduler, criterion=criterion, device=device,
                          precision=cfg["precision"], stop_requested=stop_requested,
                          skip_errors=skip_errors)

    loader = episode_loader(dataset, start=state.next_episode, batch_size=batch,
                            num_workers=int(cfg["num_workers"]), pin_memory=device.type == "cuda")
    counts = _Counts()
    it = iter(loader)
    try:
        stopped = _steps(it, step_fn, state, counts, hooks, n_steps, batch)
    finally:
        hooks.close(state.step)
        del it
    state.last_snapshot = broadcast_object(state.last_snapshot)   # every rank names rank 0's file
    return _finish(state, counts, stopped, n_steps, run)


def _finish(state: TrainState, counts: _Counts, stopped: str | None, n_steps: int, run: Any) -> dict[str, Any]:
    """The result ``train`` returns (also ``run.info['training']``), with its log lines."""
    result = {"status": "stopped" if stopped else "completed", "step": state.step,
              "snapshot": str(state.last_snapshot) if state.last_snapshot else None,
              "skipped_episodes": state.skipped, "empty_mask_episodes": state.empty,
              "align_zeroed_episodes": counts.align_zeroed,
              "episodes_drawn": state.next_episode, "n_steps": n_steps}
    log.info("%d episode(s) skipped (model error), %d trained episode(s) had an empty superpixel mask, "
             "%d had alignment loss 0 (no predicted background; this rank, this session)",
             state.skipped, state.empty, counts.align_zeroed)
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
