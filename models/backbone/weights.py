"""Pretrained encoder weights: which file, where it is cached, and loading it without network.

Compute nodes have no internet, so a run never downloads: the weights must already be in the
torch hub cache (``torch.hub.get_dir()/checkpoints/<file name of torchvision's URL>``, the file
torchvision itself would use), put there by ``python -m util.fetch_weights`` on a machine with
internet. A missing file stops the run before training with ``MissingWeightsError`` naming the
path searched and that command (docs/training.md, 'Pretrained weights').

``init_weights`` (new key): ``coco`` = torchvision's COCO DeepLabV3 weights (backbone and
ASPP head), ``imagenet`` = torchvision's ImageNet ResNet weights for the backbone (what the 2019
torchvision loaded when ``use_coco_init=False``), ``random`` = nothing loaded. ``None`` follows
the original switch ``use_coco_init`` (True -> coco, False -> imagenet).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models import ResNet18_Weights, ResNet50_Weights, ResNet101_Weights
from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights, DeepLabV3_ResNet101_Weights

__all__ = ["INIT_CHOICES", "MODEL_NAMES", "FETCH_COMMAND", "WeightsSpec", "MissingWeightsError",
           "resolve_init", "weights_spec", "available_specs", "hub_checkpoint_dir",
           "require_cached", "require_init_weights", "load_cached_state"]

log = logging.getLogger(__name__)

INIT_CHOICES = ("coco", "imagenet", "random")
MODEL_NAMES = ("dlfcn_res101", "dlfcn_res50", "dlfcn_res18")
FETCH_COMMAND = "python -m util.fetch_weights"

# (modelname, init) -> torchvision weights enum; its URL names the cached file.
_WEIGHTS = {
    ("dlfcn_res101", "coco"): DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
    ("dlfcn_res101", "imagenet"): ResNet101_Weights.IMAGENET1K_V1,
    ("dlfcn_res50", "coco"): DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
    ("dlfcn_res50", "imagenet"): ResNet50_Weights.IMAGENET1K_V1,
    ("dlfcn_res18", "imagenet"): ResNet18_Weights.IMAGENET1K_V1,
}


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not in the torch hub cache (the message says how to fetch them)."""


@dataclass(frozen=True)
class WeightsSpec:
    """One pretrained weights file: for which encoder and initialisation, from which URL."""

    modelname: str
    init: str
    url: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def cache_path(self) -> Path:
        """Where torchvision caches this file: ``<torch.hub.get_dir()>/checkpoints/<file>``."""
        return hub_checkpoint_dir() / self.file_name

    @property
    def fetch_command(self) -> str:
        return f"{FETCH_COMMAND} --model {self.modelname} --init {self.init}"


def hub_checkpoint_dir() -> Path:
    """The torch hub cache of weight files (honours ``TORCH_HOME`` and ``torch.hub.set_dir``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_init(init_weights: str | None, use_coco_init: bool = True) -> str:
    """``init_weights`` if set, else the original switch: ``use_coco_init`` True -> 'coco',
    False -> 'imagenet'.

    Raises:
        ValueError: ``init_weights`` not one of ``INIT_CHOICES``.
    """
    if init_weights is None:
        return "coco" if use_coco_init else "imagenet"
    if init_weights not in INIT_CHOICES:
        raise ValueError(f"init_weights={init_weights!r}: expected one of {INIT_CHOICES} "
                         f"(or None to follow use_coco_init)")
    return init_weights


def weights_spec(modelname: str, init: str) -> WeightsSpec:
    """The weights file for ``modelname`` and ``init`` ('coco' or 'imagenet').

    Raises:
        ValueError: unknown model, or no such weights (e.g. there is no COCO DeepLabV3-ResNet18).
    """
    if modelname not in MODEL_NAMES:
        raise ValueError(f"modelname={modelname!r}: expected one of {MODEL_NAMES}")
    key = (modelname, init)
    if key not in _WEIGHTS:
        have = sorted(i for m, i in _WEIGHTS if m == modelname)
        raise ValueError(f"no '{init}' weights for {modelname} (available: {have} or 'random')")
    return WeightsSpec(modelname, init, _WEIGHTS[key].url)


def available_specs(modelname: str | None = None) -> list[WeightsSpec]:
    """Every known weights file (of one model, when given)."""
    return [WeightsSpec(m, i, w.url) for (m, i), w in _WEIGHTS.items()
            if modelname is None or m == modelname]


def require_cached(spec: WeightsSpec) -> Path:
    """The cached file of ``spec``.

    Raises:
        MissingWeightsError: not cached; names the path and the command that fetches it.
    """
    path = spec.cache_path
    if not path.is_file():
        raise MissingWeightsError(
            f"{spec.modelname} '{spec.init}' weights not found at {path} (torch hub cache; runs "
            f"never download). On a machine with internet run `{spec.fetch_command}` (or "
            f"`{FETCH_COMMAND}` for all res101 weights) with the same TORCH_HOME, copy the cache "
            f"here, or set init_weights='random'.")
    return path


def require_init_weights(modelname: str, init_weights: str | None,
                         use_coco_init: bool = True) -> Path | None:
    """Check, before any work, that the weights a run needs are cached.

    Returns:
        the cached file, or None for ``random``.
    Raises:
        ValueError: bad ``init_weights``/model combination.
        MissingWeightsError: the file is not cached.
    """
    init = resolve_init(init_weights, use_coco_init)
    if init == "random":
        if modelname not in MODEL_NAMES:
            raise ValueError(f"modelname={modelname!r}: expected one of {MODEL_NAMES}")
        return None
    return require_cached(weights_spec(modelname, init))


def load_cached_state(spec: WeightsSpec) -> dict[str, torch.Tensor]:
    """Read the cached weights (``weights_only=True``, CPU).

    Raises:
        MissingWeightsError: not cached.
        ValueError: the file is unreadable (names it and the command that fetches it again).
    """
    from util.checkpoint import read_snapshot  # util imports torch only; no cycle with models

    path = require_cached(spec)
    try:
        state = read_snapshot(path)
    except ValueError as err:
        raise ValueError(f"{err}; delete it and run `{spec.fetch_command}` again") from err
    log.info("%s: loading '%s' weights from %s", spec.modelname, spec.init, path)
    return state
