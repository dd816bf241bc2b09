"""The conformance fixture network of ``tests/fixtures/README.md``: every weight a pure
function of its state_dict key name (built from ``state_dict_keys.json`` alone, no model needed).
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

# the recorded outputs of the original code, kept in the repository (tests/fixtures/README.md)
REFERENCE = Path(__file__).resolve().parent / "fixtures"
ALPNET_REF = REFERENCE / "alpnet"

INT_KEY_SUFFIX = "num_batches_tracked"


def reference_keys() -> dict[str, list[int]]:
    """``{key: shape}`` of the original FewShotSeg state_dict."""
    return json.loads((ALPNET_REF / "state_dict_keys.json").read_text(encoding="utf-8"))


def fixture_tensor(key: str, shape: list[int]) -> torch.Tensor:
    """The fixture value of one floating-point state_dict entry."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    shape = list(shape)
    if key.endswith(".running_var"):
        return 0.75 + 0.5 * torch.rand(shape, generator=g)
    if key.endswith(".running_mean") or key.endswith(".bias"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))


def fixture_state_dict(*, tuned_localconv: bool = False) -> dict[str, torch.Tensor]:
    """The fixture state_dict; ``tuned_localconv`` takes ``encoder.localconv.weight`` from
    ``localconv_tuned.npy`` (the network of ``tests/fixtures/README.md``, 'validation/')."""
    out: dict[str, torch.Tensor] = {}
    keys = reference_keys()
    for key in sorted(keys):
        if key.endswith(INT_KEY_SUFFIX):
            out[key] = torch.zeros(keys[key], dtype=torch.long) if keys[key] else torch.tensor(0)
        else:
            out[key] = fixture_tensor(key, keys[key])
    if tuned_localconv:
        out["encoder.localconv.weight"] = torch.from_numpy(
            np.load(ALPNET_REF / "localconv_tuned.npy").astype(np.float32))
    return out
