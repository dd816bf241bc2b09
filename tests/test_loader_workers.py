"""dataloaders/episodes.py: loader workers use one OpenCV and one torch thread each (a rank and
its workers share the cores srun gives the task) and ignore the stop signals."""
from __future__ import annotations

import signal

import cv2
import torch
from torch.utils.data import Dataset

from dataloaders.episodes import WORKER_THREADS, episode_loader


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
