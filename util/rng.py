"""Random number streams of a run: every episode's draws are a pure function of
(seed, episode index, rank) (the original's numpy streams were unseeded), so resume and DDP
are exact and the number of DataLoader workers changes nothing.

Global RNG states (torch, Python ``random``) are only used for the model's initial weights; they
are still saved in snapshots as plain data (lists of ints, tensors) that
``torch.load(weights_only=True)`` reads back.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["episode_generator", "stream_generator", "seed_everything", "rng_states",
           "set_rng_states", "PERMUTATION_STREAM", "LOAD_STREAM"]

# Tags of the per-sub-epoch streams; the sequences are 4 long, episode sequences 3 long, so the
# two families never share a seed sequence.
PERMUTATION_STREAM = 0x5EED_0001   # order of the items of one sub-epoch (DataLoader shuffle)
LOAD_STREAM = 0x5EED_0002          # scans loaded for one sub-epoch (scan_per_load > 0)


def episode_generator(seed: int, index: int, rank: int = 0) -> np.random.Generator:
    """The generator of episode ``index`` on ``rank``: ``SeedSequence([seed, index, rank])``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), int(index), int(rank)])))


def stream_generator(seed: int, rank: int, number: int, tag: int) -> np.random.Generator:
    """A generator for per-sub-epoch draws (``number``: the sub-epoch), tagged by purpose."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(
        [int(seed), int(rank), int(number), int(tag)])))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU) and Python ``random`` (model initialisation only)."""
    torch.manual_seed(int(seed))
    random.seed(int(seed))


def rng_states() -> dict[str, Any]:
    """Global RNG states as weights-only-loadable data (torch CPU/CUDA tensors, Python ints)."""
    version, state, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [int(version), [int(x) for x in state], gauss],
    }
    if torch.cuda.is_available():
        out["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_states(states: dict[str, Any] | None) -> None:
    """Restore what :func:`rng_states` returned (missing entries are left alone)."""
    if not states:
        return
    if isinstance(states.get("torch"), torch.Tensor):
        torch.set_rng_state(states["torch"])
    py = states.get("python")
    if py is not None:
        random.setstate((int(py[0]), tuple(int(x) for x in py[1]), py[2]))
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(list(cuda))
