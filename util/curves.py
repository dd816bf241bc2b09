"""Training loss curves as a PNG (written with each snapshot and at the end of training)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from util.io import atomic_path

__all__ = ["plot_loss_curves"]

log = logging.getLogger(__name__)

FIGSIZE = (7.0, 4.0)
DPI = 100


def plot_loss_curves(steps: Sequence[int], losses: Sequence[float], align_losses: Sequence[float],
                     target: str | Path, *, title: str = "") -> Path | None:
    """Plot the interval means of the query loss and the alignment loss against the step.

    Returns the PNG written, or None when there is nothing to plot yet.
    """
    if not steps:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE)
    try:
        ax.plot(list(steps), list(losses), label="loss (query cross-entropy)")
        ax.plot(list(steps), list(align_losses), label="align_loss")
        ax.set_xlabel("step")
        ax.set_ylabel("interval mean")
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return Path(target)
