"""The one way the project builds ALPNet from a config's ``model`` dict: training, validation and
``segment.py`` all call :func:`build_model`."""
from __future__ import annotations

from typing import Any, Mapping

from models.grid_proto_fewshot import FewShotSeg
from util.checkpoint import to_plain

__all__ = ["build_model"]


def build_model(model_cfg: Mapping[str, Any], *, pretrained: bool = True) -> FewShotSeg:
    """``FewShotSeg(in_channels=3, pretrained_path=None, cfg=model_cfg)``, on the CPU, in train mode.

    Args:
        model_cfg: the config's ``model`` dict (Sacred's read-only dicts are accepted).
        pretrained: False when a checkpoint will provide every weight (validation, segment,
            resume): the encoder starts at random and no pretrained file is looked for, whatever
            ``init_weights`` and ``reload_model_path`` say.
    Raises:
        ValueError: unknown keys or values (``FewShotSeg``).
        models.backbone.MissingWeightsError: ``pretrained`` and the weights are not cached.
    """
    cfg = to_plain(model_cfg, "model")
    if not pretrained:
        cfg = {**cfg, "init_weights": "random", "reload_model_path": None}
    return FewShotSeg(in_channels=3, pretrained_path=None, cfg=cfg)
