"""Checkpoints: reading, ALPNet weight loading, snapshots for resume (docs/training.md,
'Snapshots').

A snapshot is a dict with fixed keys, written atomically by rank 0::

    {"model": <state_dict of the unwrapped FewShotSeg>, "optimizer": <state_dict | None>,
     "lr_scheduler": <state_dict | None>, "step": <optimizer steps done>,
     "rng": <RNG states | None>, "config": <plain config dict | None>, "version": 1}

named ``<folder>/<step>.pth``. Checkpoints of the original code are a bare state_dict; both are
accepted wherever weights are loaded. Everything is read with ``torch.load(weights_only=True)``,
so snapshots may only hold tensors, numbers, strings, lists, tuples and dicts: ``save_snapshot``
converts the config and RNG states to such plain data (``to_plain``).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from util.io import atomic_save_torch

__all__ = ["SNAPSHOT_VERSION", "SNAPSHOT_KEYS", "read_snapshot", "model_state_from",
           "load_alpnet_weights", "save_snapshot", "list_snapshots", "latest_snapshot",
           "unwrap_model", "to_plain", "strip_module_prefix", "check_state_keys", "resolve_snapshots"]

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
SNAPSHOT_KEYS = ("model", "optimizer", "lr_scheduler", "step", "rng", "config", "version")
SNAPSHOT_NAME = re.compile(r"^(\d+)\.pth$")          # '<step>.pth'
DDP_PREFIX = "module."
ALPNET_KEY_PREFIX = "encoder."                      # every FewShotSeg key (reference keys)
MAX_NAMED_KEYS = 20                                 # keys listed in one error message

# What torch.load raises on a file that is not a (weights-only) torch checkpoint: a text file
# gives KeyError from the legacy reader, a truncated zip RuntimeError, an empty file EOFError,
# a pickle with foreign objects UnpicklingError.
_UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, TypeError,
               AttributeError, IndexError, UnicodeDecodeError, ImportError)


def read_snapshot(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file on the CPU with ``weights_only=True``.

    Args:
        path: a snapshot of this project or a bare state_dict of the original code.
    Returns:
        the dict stored in the file (not checked further; see ``model_state_from``).
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a weights-only torch checkpoint holding a dict (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as err:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint "
                         f"({type(err).__name__}: {_reason(err)})") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: not a checkpoint: holds a {type(obj).__name__}, "
                         f"expected a state_dict or a snapshot dict")
    return dict(obj)


def model_state_from(obj: Mapping[str, Any], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state_dict inside a checkpoint object.

    Args:
        obj: what ``read_snapshot`` returned: a snapshot dict (its ``model`` entry is taken) or a
            bare state_dict (original checkpoints), whose values are all tensors.
        path: the file it came from, for error messages.
    Raises:
        ValueError: neither form (names the file and the top-level keys).
    """
    model = obj.get("model") if isinstance(obj, Mapping) else None
    if isinstance(model, Mapping):
        state = model
    else:
        state = obj
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: neither a state_dict nor a snapshot dict with 'model' "
                         f"(top-level keys: {_names(list(obj))})")
    return dict(state)


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that DataParallel/DDP wrappers put on every key."""
    return {k[len(DDP_PREFIX):] if k.startswith(DDP_PREFIX) else k: v for k, v in state.items()}


def check_state_keys(model: nn.Module, state: Mapping[str, torch.Tensor],
                     path: str | os.PathLike) -> None:
    """Compare a state_dict with the model's: names and shapes.

    Raises:
        ValueError: naming the file, the missing keys, the unexpected keys and the keys whose
            shapes differ (at most ``MAX_NAMED_KEYS`` of each, with the total counts).
    """
    own = unwrap_model(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                   for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatch ({len(wrong_shape)}): {_names(wrong_shape)}")
        raise ValueError(f"{path}: weights do not fit the model; " + "; ".join(parts))


def load_alpnet_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load ALPNet weights (snapshot or original bare state_dict) into ``model``, strictly.

    A ``module.`` prefix (saved from a DDP/DataParallel wrapper) is stripped; ``model`` may itself
    be wrapped.

    Args:
        model: a ``FewShotSeg`` (or a DDP wrapper around one).
        path: the checkpoint file.
    Returns:
        the object read from the file (a snapshot dict: use its ``step``/``config``; or the bare
        state_dict).
    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable file, not an ALPNet checkpoint (no ``encoder.*`` key), or missing/
            unexpected/mis-shaped keys, each named.
    """
    obj = read_snapshot(path)
    state = strip_module_prefix(model_state_from(obj, path))
    if not any(k.startswith(ALPNET_KEY_PREFIX) for k in state):
        raise ValueError(f"{path}: not an ALPNet checkpoint: no '{ALPNET_KEY_PREFIX}*' keys "
                         f"(keys: {_names(list(state))})")
    check_state_keys(model, state, path)
    unwrap_model(model).load_state_dict(state, strict=True)
    log.info("loaded ALPNet weights from %s%s", path,
             f" (step {obj['step']})" if isinstance(obj.get("step"), int) else "")
    return obj


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def to_plain(obj: Any, where: str = "config") -> Any:
    """Convert to data that ``torch.load(weights_only=True)`` reads back.

    Mappings (Sacred's ReadOnlyDict included) become dicts, lists/ReadOnlyLists lists, tuples
    stay tuples, numpy scalars Python numbers, numpy arrays tensors, paths strings.

    Raises:
        TypeError: any other object, naming where it sits (e.g. ``config.optim.lr``).
    """
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {k: to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, list):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a weights-only snapshot")


def save_snapshot(path: str | os.PathLike, *, model: nn.Module,
                  optimizer: torch.optim.Optimizer | None = None,
                  scheduler: Any | None = None, step: int, rng: Any | None = None,
                  config: Mapping[str, Any] | None = None) -> Path:
    """Write a snapshot atomically (call on rank 0 only).

    Args:
        path: target, by convention ``<run>/snapshots/<step>.pth``.
        model: the model, possibly DDP-wrapped (its unwrapped state_dict is stored, no prefix).
        optimizer, scheduler: stored through their ``state_dict()`` when given.
        step: optimizer steps done.
        rng: RNG states (see ``to_plain`` for what is allowed).
        config: the run's config (Sacred ``_config``), stored as plain data.
    Returns:
        the path written.
    """
    snap = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "rng": to_plain(rng, "rng"),
        "config": to_plain(config, "config"),
        "version": SNAPSHOT_VERSION,
    }
    out = atomic_save_torch(snap, path)
    log.info("saved snapshot %s (step %d)", out, step)
    return out


def list_snapshots(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the ``<step>.pth`` files in ``folder``, by increasing step.

    A folder that does not exist has no snapshots (``[]``); other names (temporaries included)
    are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = SNAPSHOT_NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_snapshot(folder: str | os.PathLike) -> Path | None:
    """The ``<step>.pth`` in ``folder`` with the highest step, or None when there is none."""
    snaps = list_snapshots(folder)
    return snaps[-1][1] if snaps else None


def _reason(err: BaseException) -> str:
    """The informative line of a torch.load error (weights-only refusals are long)."""
    text = str(err)
    for line in text.splitlines():
        if "WeightsUnpickler error" in line:
            return line.strip()[:300]
    return text.splitlines()[0][:300] if text else repr(err)


def _names(keys: list[str]) -> str:
    shown = ", ".join(map(str, keys[:MAX_NAMED_KEYS]))
    return shown + (f", ... ({len(keys) - MAX_NAMED_KEYS} more)" if len(keys) > MAX_NAMED_KEYS
                    else "")


def resolve_snapshots(reload_model_path: Any) -> list[Path]:
    """The snapshot files named by ``reload_model_path``: a file, a folder of ``<step>.pth``
    (or a run folder holding ``snapshots/``), or a list of those, in the given order.

    Raises:
        ValueError: unset, or a folder without any ``<step>.pth``.
        FileNotFoundError: a path that does not exist.
    """
    if reload_model_path in (None, "", []):
        raise ValueError("reload_model_path is not set: validation needs a snapshot "
                         "(reload_model_path=<run>/snapshots/<step>.pth, a snapshots folder or a list)")
    items = [reload_model_path] if isinstance(reload_model_path, (str, os.PathLike)) else list(reload_model_path)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            folder = p / "snapshots" if (p / "snapshots").is_dir() else p
            found = [path for _, path in list_snapshots(folder)]
            if not found:
                raise ValueError(f"reload_model_path {p}: no <step>.pth snapshot in {folder}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"reload_model_path {p}: no such file or folder")
    return out
