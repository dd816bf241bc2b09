"""What ``segment.py`` needs to know about a checkpoint before building the network: that it is
ALPNet, which encoder it holds, and the settings its training run recorded.

Checkpoints of the original code are a bare state_dict (no config): the encoder is recognised
from the number of residual blocks in ``layer3`` of its keys (torchvision ResNets: 23 blocks for
ResNet-101, 6 for ResNet-50, 2 for ResNet-18). Our snapshots carry the run's ``config``
(``model``, ``n_sup_part``, ``val_wsize``, ``dataset``), which is used when present (the
configuration travels as data, never parsed from a file name).
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dataloaders.scans import NormStats
from models.builder import build_model
from models.grid_proto_fewshot import DEFAULT_CFG
from util.checkpoint import load_alpnet_weights, model_state_from, read_snapshot, strip_module_prefix

__all__ = ["CheckpointInfo", "inspect_checkpoint", "modelname_from_state", "build_segmenter",
           "DEFAULT_NPART", "DEFAULT_VAL_WSIZE", "LAYER3_BLOCKS"]

log = logging.getLogger(__name__)

DEFAULT_NPART = 3          # n_sup_part default
DEFAULT_VAL_WSIZE = 2      # val_wsize default
LAYER3_BLOCKS = {23: "dlfcn_res101", 6: "dlfcn_res50", 2: "dlfcn_res18"}  # torchvision depths
ALPNET_PREFIX = "encoder."
_LAYER3 = re.compile(r"^encoder\.backbone\.layer3\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """A checked checkpoint: its path, the FewShotSeg ``cfg`` to build, protocol settings, and
    (for CT) the fold-global intensity statistics when the run recorded them."""
    path: Path
    model_cfg: dict[str, Any]
    npart: int
    val_wsize: int
    dataset: str | None
    norm_stats: NormStats | None
    step: int | None

    @property
    def modelname(self) -> str:
        return str(self.model_cfg["which_model"])


def modelname_from_state(state: Mapping[str, torch.Tensor], path: str | Path) -> str:
    """The encoder of an ALPNet state_dict, from its ``layer3`` blocks (module docstring).

    Raises:
        ValueError: not an ALPNet checkpoint (no ``encoder.*`` key or an unknown encoder),
            naming the file.
    """
    if not any(k.startswith(ALPNET_PREFIX) for k in state):
        shown = ", ".join(list(state)[:8])
        raise ValueError(f"{path}: not an ALPNet checkpoint: no '{ALPNET_PREFIX}*' weights "
                         f"(keys: {shown}{', ...' if len(state) > 8 else ''})")
    blocks = {int(m.group(1)) for k in state if (m := _LAYER3.match(k))}
    n = max(blocks) + 1 if blocks else 0
    if n not in LAYER3_BLOCKS:
        raise ValueError(f"{path}: not an ALPNet checkpoint of a known encoder: {n} blocks in "
                         f"encoder.backbone.layer3 (known: "
                         f"{', '.join(f'{v} {k}' for k, v in LAYER3_BLOCKS.items())})")
    return LAYER3_BLOCKS[n]


def _norm_stats(config: Mapping[str, Any]) -> NormStats | None:
    raw = config.get("norm_stats")
    if isinstance(raw, Mapping) and "mean" in raw and "std" in raw:
        return NormStats(float(raw["mean"]), float(raw["std"]))
    return None


def inspect_checkpoint(path: str | Path) -> CheckpointInfo:
    """Read and check a checkpoint (ours or the original code's) without building a network.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, not ALPNet, or an encoder that differs from its config's.
    """
    path = Path(path)
    obj = read_snapshot(path)
    state = strip_module_prefix(model_state_from(obj, path))
    inferred = modelname_from_state(state, path)
    config = obj.get("config") if isinstance(obj.get("config"), Mapping) else {}
    model_cfg: dict[str, Any] = {}
    if isinstance(config.get("model"), Mapping):
        model_cfg.update({k: v for k, v in config["model"].items() if k in DEFAULT_CFG})
    named = model_cfg.get("which_model") or config.get("modelname")
    if named is not None and named != inferred:
        raise ValueError(f"{path}: its config names modelname={named!r} but the weights are "
                         f"those of {inferred!r}")
    model_cfg["which_model"] = inferred
    dataset = config.get("dataset")
    step = obj.get("step") if isinstance(obj.get("step"), int) else None
    return CheckpointInfo(path, model_cfg, int(config.get("n_sup_part", DEFAULT_NPART)),
                          int(config.get("val_wsize", DEFAULT_VAL_WSIZE)),
                          str(dataset) if dataset else None, _norm_stats(config), step)


def build_segmenter(info: CheckpointInfo, device: torch.device | str) -> torch.nn.Module:
    """The FewShotSeg of ``info`` with the checkpoint's weights, in eval mode on ``device``.

    The network is built with random initial weights (nothing pretrained is looked for: the
    checkpoint provides every weight), then loaded strictly.
    """
    model = build_model(info.model_cfg, pretrained=False).eval()
    load_alpnet_weights(model, info.path)
    log.info("segmenter: %s from %s%s", info.modelname, info.path,
             f" (step {info.step})" if info.step is not None else "")
    return model.to(torch.device(device)).eval()
