"""Resume (docs/training.md, 'Resume'): which snapshot to continue from, and restoring model, optimizer,
scheduler and the episode stream from it.

``resume=True`` takes the snapshot with the highest step among the experiment's run
directories ``<log_dir>/mySSL_<exp_str>/*/snapshots/<step>.pth``; ``resume_from=PATH`` an
explicit one. No sampler state is needed: episode ``g`` is a pure function of (seed, g, rank),
and the snapshot's ``rng['stream']`` holds the next episode index (failed episodes move it on).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from util.checkpoint import list_snapshots, load_alpnet_weights, to_plain
from util.distributed import broadcast_object
from util.rng import set_rng_states

__all__ = ["TrainState", "find_resume_snapshot", "resume_path", "restore_snapshot", "SNAPSHOT_DIR",
           "STREAM_KEYS"]

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"     # <run>/snapshots/<step>.pth (docs/training.md, 'Snapshots')
# keys that decide the episode stream and the model: a change on resume is warned about
STREAM_KEYS = ("seed", "dataset", "batch_size", "which_aug", "exclude_cls_list", "label_sets",
               "eval_fold", "superpix_scale", "max_iters_per_load", "scan_per_load", "modelname")


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


def restore_snapshot(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             cfg: Mapping[str, Any]) -> TrainState:
    """Load a snapshot into model, optimizer and scheduler; the state to continue from."""
    obj = load_alpnet_weights(model, path)   # strict; names missing/unexpected keys
    if not isinstance(obj.get("step"), int) or obj.get("optimizer") is None:
        raise ValueError(f"{path}: bare model weights, not a training snapshot (no step/optimizer "
                         "state): start from them with reload_model_path instead of resuming")
    optimizer.load_state_dict(obj["optimizer"])
    if obj.get("lr_scheduler") is not None:
        scheduler.load_state_dict(obj["lr_scheduler"])
    rng = obj.get("rng") or {}
    set_rng_states(rng)
    stream = rng.get("stream") or {}
    old = obj.get("config") or {}
    changed = [k for k in STREAM_KEYS if k in old and to_plain(cfg.get(k)) != old[k]]
    if changed:
        log.warning("resuming %s with changed %s: the continuation differs from an uninterrupted run",
                    path, ", ".join(f"{k} ({old[k]!r} -> {cfg.get(k)!r})" for k in changed))
    step = int(obj["step"])
    log.info("resuming from %s after step %d", path, step)
    return TrainState(step=step, skipped=int(stream.get("skipped", 0)), empty=int(stream.get("empty", 0)),
                      next_episode=int(stream.get("next_episode", step * int(cfg["batch_size"]))),
                      last_snapshot=path)


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
