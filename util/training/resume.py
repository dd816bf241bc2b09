"""Resume (docs/training.md, 'Resume'): which snapshot to continue from, and restoring model, optimizer,
scheduler and the episode stream from it.

``resume=True`` takes the snapshot with the highest step among the experiment's run
directories ``<log_dir>/mySSL_<exp_str>/*/snapshots/<step>.pth``; ``resume_from=PATH`` an
explicit one. No sampler state is needed: episode ``g`` is a pure function of (seed, g, rank),
and the snapshot's ``rng['stream']`` holds the next episode index (failed episodes move it on).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from util.checkpoint import list_snapshots, load_alpnet_weights, to_plain
from util.config_keys import as_lists, leaves
from util.distributed import broadcast_object
from util.rng import set_rng_states

__all__ = ["TrainState", "find_resume_snapshot", "resume_path", "restore_snapshot", "SNAPSHOT_DIR",
           "RESUME_KEYS", "MAY_CHANGE", "REFUSED", "resume_policy", "check_resume_config",
           "restore_schedule", "preflight_resume"]

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"     # <run>/snapshots/<step>.pth (docs/training.md, 'Snapshots')

MAY_CHANGE, REFUSED = "may change", "refused"
# What a resumed run may change (docs/training.md, 'Stop and resume'), by config key; nested keys
# dotted, ``*`` matches any name. A key not listed is refused. Everything that decides the model,
# the episodes, the loss or the optimizer up to the resume step is refused; the schedule ahead
# (n_steps, lr_milestones after the resume step), logging, paths, workers and the weights a fresh
# start would load may change.
_WEIGHTS = "ignored on resume: the snapshot holds the weights"
_VAL = "validation only"
RESUME_KEYS: dict[str, tuple[str, str]] = {
    "n_steps": (MAY_CHANGE, "the new end of training"),
    "lr_milestones": (MAY_CHANGE, "only milestones after the resume step (derived from n_steps)"),
    "save_snapshot_every": (MAY_CHANGE, "snapshot interval"),
    "print_interval": (MAY_CHANGE, "logging interval"),
    "num_workers": (MAY_CHANGE, "loader processes: the episodes do not depend on them"),
    "gpu_id": (MAY_CHANGE, "device choice"),
    "deterministic": (MAY_CHANGE, "decides whether the continuation is bit-identical"),
    "precision": (MAY_CHANGE, "arithmetic of the continuation (fp32/bf16)"),
    "compile": (MAY_CHANGE, "how the encoder is executed, not what it computes"),
    "tensorboard": (MAY_CHANGE, "event files for TensorBoard"),
    "resume": (MAY_CHANGE, "how the snapshot is found"),
    "resume_from": (MAY_CHANGE, "how the snapshot is found"),
    "reload_model_path": (MAY_CHANGE, _WEIGHTS), "model.reload_model_path": (MAY_CHANGE, _WEIGHTS),
    "use_coco_init": (MAY_CHANGE, _WEIGHTS), "model.use_coco_init": (MAY_CHANGE, _WEIGHTS),
    "init_weights": (MAY_CHANGE, _WEIGHTS), "model.init_weights": (MAY_CHANGE, _WEIGHTS),
    "exp_prefix": (MAY_CHANGE, "names the run directory"),
    "exp_str": (MAY_CHANGE, "names the run directory"),
    "path.*": (MAY_CHANGE, "folders (log_dir, data_dir): the data in them must be the same"),
    "mode": (MAY_CHANGE, "always 'train' when training"),
    "support_idx": (MAY_CHANGE, _VAL), "val_wsize": (MAY_CHANGE, _VAL),
    "n_sup_part": (MAY_CHANGE, _VAL), "val_batch_size": (MAY_CHANGE, _VAL),
    "save_raw_geometry": (MAY_CHANGE, _VAL), "write_figures": (MAY_CHANGE, _VAL),
    "z_margin": (MAY_CHANGE, _VAL),
    "seed": (REFUSED, "decides every episode"),
    "dataset": (REFUSED, "the training data"),
    "eval_fold": (REFUSED, "the training scans"),
    "label_sets": (REFUSED, "the training labels"),
    "exclude_cls_list": (REFUSED, "the training slices"),
    "batch_size": (REFUSED, "episodes per step and the episode stream"),
    "which_aug": (REFUSED, "the episodes"), "input_size": (REFUSED, "the episodes"),
    "min_fg_data": (REFUSED, "the episodes"), "superpix_scale": (REFUSED, "the episodes"),
    "max_iters_per_load": (REFUSED, "the episodes"), "scan_per_load": (REFUSED, "the episodes"),
    "redraw_empty_superpix": (REFUSED, "the episodes"), "task.*": (REFUSED, "the episodes"),
    "ignore_label": (REFUSED, "the loss"), "use_wce": (REFUSED, "the loss"),
    "usealign": (REFUSED, "the loss"),
    "modelname": (REFUSED, "the model"), "clsname": (REFUSED, "the model"),
    "proto_grid_size": (REFUSED, "the model"), "feature_hw": (REFUSED, "the model"),
    "model.*": (REFUSED, "the model"),
    "optim_type": (REFUSED, "the optimizer"), "optim.*": (REFUSED, "the optimizer"),
    "lr_step_gamma": (REFUSED, "the learning rate already used"),
}
MAX_REFUSED_SHOWN = 10


def find_resume_snapshot(experiment_dir: str | Path) -> Path | None:
    """The snapshot with the highest step among ``<experiment_dir>/*/snapshots/<step>.pth``
    (ties: the newest file), or None."""
    best: tuple[int, float, Path] | None = None
    root = Path(experiment_dir)
    if not root.is_dir():
        return None
    for run in root.iterdir():
        for step, path in list_snapshots(run / SNAPSHOT_DIR):
            key = (step, path.stat().st_mtime, path)
            if best is None or key[:2] > best[:2]:
                best = key
    return best[2] if best else None


@dataclasses.dataclass
class TrainState:
    """Where training stands; ``next_episode`` is this rank's position in its episode stream."""
    step: int = 0
    next_episode: int = 0
    skipped: int = 0
    empty: int = 0
    last_snapshot: Path | None = None

    def stream(self) -> dict[str, int]:
        return {"next_episode": self.next_episode, "skipped": self.skipped, "empty": self.empty}


def resume_policy(key: str) -> tuple[str, str]:
    """(MAY_CHANGE | REFUSED, why) of a dotted config key; unlisted keys are refused."""
    if key in RESUME_KEYS:
        return RESUME_KEYS[key]
    for pattern, value in RESUME_KEYS.items():
        if "*" in pattern and fnmatch.fnmatchcase(key, pattern):
            return value
    return REFUSED, "not in the resume table"


def check_resume_config(old: Mapping[str, Any], new: Mapping[str, Any], path: str | Path,
                        step: int) -> None:
    """Refuse a resumption whose config changes a key that ``RESUME_KEYS`` refuses.

    ``lr_milestones`` may change only after ``step`` (those up to it decided the learning rate
    already used). Keys missing on either side (snapshots of older versions) are not compared.

    Raises:
        ValueError: naming every refused key with its value in the snapshot and now.
    """
    now = {k: as_lists(v) for k, v in leaves(to_plain(dict(new)))}
    problems = []
    for key, was in leaves(old):
        if key not in now or as_lists(was) == now[key]:
            continue
        policy, why = resume_policy(key)
        if policy == REFUSED:
            problems.append(f"{key}: {was!r} in the snapshot, {now[key]!r} now ({why})")
    if "lr_milestones" in old and "lr_milestones" in now:
        before = [int(m) for m in old["lr_milestones"] if int(m) <= step]
        after = [int(m) for m in now["lr_milestones"] if int(m) <= step]
        if before != after:
            problems.append(f"lr_milestones up to step {step}: {before} in the snapshot, {after} now "
                            "(only milestones after the resume step may change)")
    if problems:
        shown = problems[:MAX_REFUSED_SHOWN]
        more = f"; ... ({len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        raise ValueError(
            f"{path}: cannot resume with a changed {'; '.join(shown)}{more}. Resume with the "
            f"snapshot's values, or start a new run from its weights with reload_model_path={path} "
            "(docs/training.md, 'Stop and resume')")


def restore_schedule(scheduler: Any, optimizer: torch.optim.Optimizer,
                     saved: Mapping[str, Any] | None, step: int) -> None:
    """Continue the CURRENT config's MultiStepLR at ``step``, not the saved one.

    A scheduler's state_dict holds its milestones: loading it whole would keep the first run's
    schedule (a run resumed to a longer ``n_steps`` would never decay after the old end). Only the
    position comes from the snapshot (``last_epoch``: scheduler steps done, = ``step``); the
    milestones and gamma stay the resumed config's, and every parameter group's learning rate
    becomes ``base_lr`` times ``gamma`` once per milestone <= position (multiplied in the order
    ``step()`` does, so the value is bit-identical to an uninterrupted run's).
    """
    position = int(saved["last_epoch"]) if saved and "last_epoch" in saved else int(step)
    passed = sorted((m, n) for m, n in scheduler.milestones.items() if m <= position)
    scheduler.last_epoch = position
    scheduler._step_count = position + 1        # torch's count of step() calls (order warning)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        lr = base
        for _, count in passed:                 # one product per milestone, as step() computes it
            lr = lr * scheduler.gamma ** count
        group["lr"] = lr
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]   # get_last_lr()


def restore_snapshot(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     cfg: Mapping[str, Any]) -> TrainState:
    """Load a snapshot into model, optimizer and scheduler; the state to continue from.

    The config may differ from the snapshot's only where ``RESUME_KEYS`` allows (else
    ValueError); the learning-rate schedule is the current config's (``restore_schedule``).
    """
    try:                     # the config first: a changed modelname is named as such
        peek = _peek(path)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError):
        peek = None          # unreadable: load_alpnet_weights below names the problem
    if peek is not None and isinstance(peek.get("step"), int):
        check_resume_config(peek.get("config") or {}, cfg, path, int(peek["step"]))
    obj = load_alpnet_weights(model, path)   # strict; names missing/unexpected keys
    problem = _bare_weights(path, obj)
    if problem:
        raise ValueError(problem)
    step = int(obj["step"])
    optimizer.load_state_dict(obj["optimizer"])
    restore_schedule(scheduler, optimizer, obj.get("lr_scheduler"), step)
    rng = obj.get("rng") or {}
    set_rng_states(rng)
    stream = rng.get("stream") or {}
    log.info("resuming from %s after step %d", path, step)
    return TrainState(step=step, skipped=int(stream.get("skipped", 0)), empty=int(stream.get("empty", 0)),
                      next_episode=int(stream.get("next_episode", step * int(cfg["batch_size"]))),
                      last_snapshot=path)


def _bare_weights(path: str | Path, obj: Mapping[str, Any] | None) -> str | None:
    """Why ``obj`` (the loaded file) cannot be resumed from: no training state (step and
    optimizer); None for a training snapshot."""
    if obj is not None and isinstance(obj.get("step"), int) and obj.get("optimizer") is not None:
        return None
    return (f"{path}: bare model weights, not a training snapshot (no step/optimizer state): "
            "start from them with reload_model_path instead of resuming")


def _peek(path: str | Path) -> Mapping[str, Any] | None:
    """A snapshot's top-level dict, memory-mapped (tensors are not read), or None when the file
    does not hold a dict."""
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return obj if isinstance(obj, Mapping) else None


def preflight_resume(cfg: Mapping[str, Any], experiment_dir: str | Path) -> Path | None:
    """Before a run exists: the snapshot a resumption would continue from, checked against the
    config (``check_resume_config``), so a refused change costs no run directory.

    The snapshot is memory-mapped: only its small entries (step, config) are read here.

    Returns:
        the snapshot, or None when the config does not resume (or ``resume=True`` finds none).
    Raises:
        UserError: a bare state_dict given to resume from, or refused key changes (named).
    """
    from util.user_errors import UserError

    if cfg.get("resume_from"):
        path = Path(cfg["resume_from"])
    elif cfg.get("resume"):
        path = find_resume_snapshot(experiment_dir)
        if path is None:
            return None
    else:
        return None
    try:
        obj = _peek(path)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError(f"{path}: not a readable training snapshot ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from err
    problem = _bare_weights(path, obj)
    if problem:
        raise UserError(problem)
    try:
        check_resume_config(obj.get("config") or {}, cfg, path, int(obj["step"]))
    except ValueError as err:
        raise UserError(str(err)) from err
    return path


def resume_path(cfg: Mapping[str, Any], experiment_dir: Path | None, is_main: bool) -> Path | None:
    """The snapshot to continue from: ``resume_from``, else (``resume=True``) the newest of the
    experiment, found by rank 0 and broadcast to every rank; None to start afresh."""
    if cfg.get("resume_from"):
        return Path(cfg["resume_from"])
    if not cfg.get("resume"):
        return None
    found = find_resume_snapshot(experiment_dir) if (is_main and experiment_dir) else None
    found = broadcast_object(found)
    if found is None:
        log.warning("resume=True but no snapshot under %s/*/%s: starting from step 0",
                    experiment_dir, SNAPSHOT_DIR)
    return found
