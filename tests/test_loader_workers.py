"""dataloaders/episodes.py: loader workers use one OpenCV and one torch thread each (a rank and
its workers share the cores srun gives the task) and ignore the stop signals."""
from __future__ import annotations

import signal
import time

import cv2
import torch
from torch.utils.data import Dataset

from dataloaders.episodes import WORKER_THREADS, episode_loader

HANG_SECONDS = 60      # a worker's first batch takes well under a second


class _ThreadReport(Dataset):
    """Each item: what the worker that builds it sees (threads, signal handlers)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"cv2": cv2.getNumThreads(), "torch": torch.get_num_threads(),
                "usr1_ignored": signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN}


def test_workers_use_one_opencv_and_one_torch_thread():
    cv2.setNumThreads(4)                  # the parent's setting: workers must not inherit it
    try:
        loader = episode_loader(_ThreadReport(), start=0, batch_size=2, num_workers=1)
        batch = next(iter(loader))
    finally:
        cv2.setNumThreads(-1)             # back to OpenCV's default
    assert WORKER_THREADS == 1
    assert batch["cv2"].tolist() == [1, 1] and batch["torch"].tolist() == [1, 1]
    assert batch["usr1_ignored"].tolist() == [True, True]


def test_worker_start_survives_a_busy_opencv_pool_in_the_parent():
    """The parent has run OpenCV in parallel (its pool threads exist) before the workers fork:
    the worker must start and build items (resetting OpenCV's pool inside the forked child
    hung here). Several rounds, since the hang depends on the pool's state at the fork."""
    import numpy as np

    image = np.random.default_rng(0).random((2048, 2048)).astype(np.float32)
    rotation = cv2.getRotationMatrix2D((1024.0, 1024.0), 5.0, 1.1)
    for _ in range(3):
        cv2.setNumThreads(4)
        cv2.warpAffine(image, rotation, (2048, 2048))  # starts OpenCV's pool in this process
        time.sleep(0.2)                                 # its threads now wait for work
        loader = episode_loader(_ThreadReport(), start=0, batch_size=2, num_workers=1)
        loader.timeout = HANG_SECONDS       # a hung worker fails the test instead of hanging it
        assert next(iter(loader))["cv2"].tolist() == [1, 1]
    cv2.setNumThreads(-1)
