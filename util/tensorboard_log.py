"""TensorBoard event files in a run folder (docs/training.md, 'Live curves in TensorBoard'):
opening a writer (rank 0, the ``tensorboard`` key on), scalars and PNG figures as images, and the
purge marker that keeps every step once across a resume.

Steps are global optimizer steps: a resumed run writes ``k + 1 ..`` into its own run folder. When
it continues a run that got further than its last snapshot (killed, out of memory, a failed node),
:func:`purge_after` appends to that run's folder an event saying that its steps after ``k`` are
void (TensorBoard's ``SessionLog.START`` with ``step = k + 1``, what ``SummaryWriter(purge_step=)``
writes); TensorBoard then drops them, so no step is shown twice.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["TENSORBOARD_KEY", "FLUSH_SECS", "EVENT_GLOB", "tensorboard_problem", "open_writer",
           "has_events", "purge_after", "add_scalars", "add_png"]

log = logging.getLogger(__name__)

TENSORBOARD_KEY = "tensorboard"        # config key: True writes event files (default)
FLUSH_SECS = 10                        # how stale a live view may be
EVENT_GLOB = "events.out.tfevents.*"   # the names SummaryWriter gives its files


def tensorboard_problem() -> str | None:
    """Why no event file can be written here (the package is missing), or None."""
    if importlib.util.find_spec("tensorboard") is None:
        return ("the tensorboard package is not installed: `python3 -m pip install tensorboard` "
                "(it is in requirements.txt), or pass tensorboard=False")
    return None


def open_writer(run_dir: str | Path | None, *, enabled: bool = True, purge_step: int | None = None) -> Any:
    """A ``SummaryWriter`` on ``run_dir``, or None (no folder, switched off, or no package:
    warned once).

    Args:
        purge_step: TensorBoard drops this folder's earlier events at this step and later.
    """
    if run_dir is None or not enabled:
        return None
    problem = tensorboard_problem()
    if problem:
        log.warning("no TensorBoard events: %s", problem)
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir), flush_secs=FLUSH_SECS, purge_step=purge_step)


def has_events(run_dir: str | Path) -> bool:
    return any(Path(run_dir).glob(EVENT_GLOB))


def purge_after(run_dir: str | Path, step: int) -> bool:
    """Mark the steps after ``step`` in ``run_dir``'s event files void (a run continued from its
    snapshot at ``step``); nothing when the folder holds no event file. True when marked."""
    if not has_events(run_dir):
        return False
    writer = open_writer(run_dir, purge_step=int(step) + 1)
    if writer is None:
        return False
    writer.close()
    log.info("TensorBoard: steps after %d in %s are superseded by this run", step, run_dir)
    return True


def add_scalars(writer: Any, values: Mapping[str, float], step: int) -> None:
    """``writer.add_scalar(tag, value, step)`` for each finite or infinite value (NaN: left out,
    as the tables leave it out of the means)."""
    if writer is None:
        return
    for tag, value in values.items():
        if value is not None and not np.isnan(float(value)):
            writer.add_scalar(tag, float(value), int(step))


def add_png(writer: Any, tag: str, path: str | Path, step: int) -> None:
    """A PNG file as an image (RGB) at ``step``."""
    if writer is None:
        return
    from PIL import Image

    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))               # H x W x 3 uint8
    writer.add_image(tag, rgb, int(step), dataformats="HWC")
