"""Training episodes: the dict one episode is made of, the infinite stream of episode indices
that feeds the DataLoader, and the factory choosing the dataset from the config.

An episode's index ``g`` counts episodes of this rank from the start of training; step ``s``
with batch size ``B`` normally takes episodes ``s * B .. s * B + B - 1`` (skipped episodes move
the stream on: docs/method.md, 'Model (ALPNet)'). Every draw of episode ``g`` is a pure function
of ``(seed, g, rank)``, so the number of workers, restarts and resume do not change what is
trained on.
"""
from __future__ import annotations

import logging
import signal
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["make_episode", "EpisodeBatchSampler", "episode_loader", "ignore_stop_signals",
           "init_worker", "WORKER_THREADS",
           "SUPPORT_CLASS"]

log = logging.getLogger(__name__)

SUPPORT_CLASS = 1       # foreground value of the binary episode masks (docs/method.md, 'Training episodes')
# threads of each loader worker (OpenCV and torch): a rank and its workers share the cores srun
# gives the task (-c); OpenCV would otherwise start one thread per core of the node in each worker
WORKER_THREADS = 1


def make_episode(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], n_shots: int,
                 **meta: Any) -> dict[str, Any]:
    """Assemble one 1-way episode from augmented copies.

    Args:
        images: n_shots + n_queries slices, each H x W float32 (supports first).
        masks: the matching binary masks, each H x W (1 = the episode's class).
        n_shots: how many of the copies are supports.
        meta: extra items kept as they are (scan id, slice, flags).
    Returns:
        ``support_images`` way x shot x [3 x H x W] (the slice repeated to 3 channels),
        ``support_mask`` way x shot x {``fg_mask``, ``bg_mask``: H x W float32}
        (``fg = mask == 1``, ``bg = mask != 1``), ``query_images`` n_queries x [3 x H x W],
        ``query_labels`` n_queries x [H x W int64] (0/1), plus ``meta``. After the default
        collate every tensor gains a leading batch dimension B.
    """
    def three(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None].repeat(3, 1, 1)

    shots = []
    for img, mask in zip(images[:n_shots], masks[:n_shots]):
        fg = mask == SUPPORT_CLASS
        shots.append((three(img), {"fg_mask": torch.from_numpy(fg.astype(np.float32)),
                                   "bg_mask": torch.from_numpy((~fg).astype(np.float32))}))
    episode = {
        "support_images": [[s[0] for s in shots]],
        "support_mask": [[s[1] for s in shots]],
        "query_images": [three(img) for img in images[n_shots:]],
        "query_labels": [torch.from_numpy((mask == SUPPORT_CLASS).astype(np.int64))
                         for mask in masks[n_shots:]],
    }
    episode.update(meta)
    return episode


class EpisodeBatchSampler(Sampler):
    """Yields ``[g, g + 1, ..., g + B - 1]`` for ``g = start, start + B, ...`` without end.

    The training loop stops consuming it after its last step; DataLoader workers only prefetch.
    """

    def __init__(self, start: int, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.start = int(start)
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.start
        while True:
            yield list(range(g, g + self.batch_size))
            g += self.batch_size


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker init: SIGUSR1/SIGTERM are for the training process (which saves and
    exits, shutting its workers down); a worker killed by them would crash the run first."""
    from util.signals import STOP_SIGNALS
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def init_worker(worker_id: int) -> None:
    """DataLoader worker init: stop signals ignored (``ignore_stop_signals``) and
    ``WORKER_THREADS`` torch threads per worker. OpenCV's thread count is inherited from the
    parent, which ``episode_loader`` sets before the workers fork: changing it inside a forked
    child tears down a thread pool copied from the parent without its threads, which can hang
    the worker forever (seen with OpenCV 4 under the test suite)."""
    ignore_stop_signals(worker_id)
    torch.set_num_threads(WORKER_THREADS)


def episode_loader(dataset: Dataset, *, start: int, batch_size: int, num_workers: int,
                   pin_memory: bool = False) -> DataLoader:
    """A DataLoader over episodes ``start, start + 1, ...`` in batches of ``batch_size``."""
    if int(num_workers) > 0:
        # before the fork, in this process: workers inherit it (see init_worker); augmentation,
        # OpenCV's only user, runs in the workers then
        import cv2
        cv2.setNumThreads(WORKER_THREADS)
    return DataLoader(dataset, batch_sampler=EpisodeBatchSampler(start, batch_size),
                      num_workers=int(num_workers), pin_memory=pin_memory,
                      persistent_workers=False,
                      worker_init_fn=init_worker if int(num_workers) > 0 else None)
