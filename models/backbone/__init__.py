"""Encoders (dilated-FCN ResNets + localconv) and their pretrained weights."""
from __future__ import annotations

from models.backbone.dlfcn import FEATURE_CHANNELS, OUTPUT_STRIDE, DilatedFCNEncoder, build_encoder
from models.backbone.weights import INIT_CHOICES, MODEL_NAMES, MissingWeightsError, require_init_weights, resolve_init

__all__ = ["FEATURE_CHANNELS", "OUTPUT_STRIDE", "DilatedFCNEncoder", "build_encoder",
           "INIT_CHOICES", "MODEL_NAMES", "MissingWeightsError", "require_init_weights", "resolve_init"]
