"""Figure panels written into run folders (PNG, matplotlib's Agg canvas, no global backend switch):

- support/query rows of slices with their mask contours, :func:`plot_support_query` (validation's
  per-organ figures, ``util.validation.figures``, and segment's are made of them);
- the loss curves (raw values and a moving average), :func:`plot_loss_curves`.

Every slice is drawn in the radiological display convention (anterior at the top, the patient's
right on the image's left for axial slices), turned from the direction matrix of the scan it comes
from by :func:`util.radiological.to_radiological`, whatever the file's orientation; each panel
carries the patient sides at its top and left edges, and the figure's title says so.
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from util.io import atomic_path
from util.radiological import DisplayOrientation, apply_orientation, radiological_orientation

__all__ = ["plot_loss_curves", "plot_support_query", "moving_average",
           "orientation_caption"]

log = logging.getLogger(__name__)

DPI = 100
PANEL_IN = 2.6                 # inches per panel
GT_COLOUR, PRED_COLOUR, SUPPORT_COLOUR = "lime", "red", "yellow"
TITLE_FONTSIZE = 9
TITLE_CHARS_PER_IN = 14        # title lines wrapped to the figure's width (9 pt text)
TITLE_LINE_IN = 0.2            # height per title line, plus one line of margin
SIDE_COLOUR = "deepskyblue"    # the patient-side letters at each panel's top and left edges
SIDE_WORDS = {"A": "anterior", "P": "posterior", "S": "superior", "I": "inferior",
              "R": "patient's right", "L": "patient's left"}
SMOOTH_FRACTION = 0.02         # moving-average window: 2 % of the curve (at least 1 point)


def _save(fig: Figure, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    FigureCanvasAgg(fig)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return out_png


def _panel(ax, image_hw: np.ndarray, title: str, contours: Sequence[tuple[np.ndarray, str]],
           direction: Sequence[float]) -> DisplayOrientation:
    """One slice and its mask contours, all turned to radiological display by ``direction``."""
    orient = radiological_orientation(direction)
    shown = apply_orientation(image_hw, orient)
    ax.imshow(shown, cmap="gray", interpolation="nearest")
    for mask, colour in contours:
        if np.any(mask) and not np.all(mask):
            ax.contour(apply_orientation(mask, orient).astype(np.float32), levels=[0.5],
                       colors=colour, linewidths=1.0)
    h, w = shown.shape
    ax.text(w / 2, 0, orient.top, color=SIDE_COLOUR, fontsize=7, ha="center", va="top")
    ax.text(0, h / 2, orient.left, color=SIDE_COLOUR, fontsize=7, ha="left", va="center")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
    return orient


def orientation_caption(orientations: Sequence[DisplayOrientation]) -> str:
    """The figure-title phrase for the panels' display orientations."""
    sides = {(o.top, o.left) for o in orientations}
    if len(sides) == 1:
        top, left = sides.pop()
        return f"radiological view: {SIDE_WORDS[top]} at the top, {SIDE_WORDS[left]} on the image's left"
    return "radiological view (each panel's top and left sides marked)"


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start), NaNs ignored."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    for i in range(v.size):
        seg = v[max(0, i - window + 1): i + 1]
        seg = seg[np.isfinite(seg)]
        out[i] = seg.mean() if seg.size else np.nan
    return out


def plot_loss_curves(metrics: Mapping[str, Sequence[float]], out_png: str | Path,
                     steps: Mapping[str, Sequence[int]] | None = None) -> Path:
    """One panel per metric (e.g. ``loss``, ``align_loss``): raw values and a moving average.

    Args:
        metrics: name -> values, one per step.
        out_png: the PNG to write (atomically).
        steps: optional name -> step numbers (default 1, 2, ...).
    Raises:
        ValueError: no metric, or steps of another length than their values.
    """
    if not metrics:
        raise ValueError("plot_loss_curves: no metric to plot")
    fig = Figure(figsize=(6.0, 2.4 * len(metrics)))
    for i, (name, values) in enumerate(metrics.items()):
        ax = fig.add_subplot(len(metrics), 1, i + 1)
        x = np.arange(1, len(values) + 1) if steps is None or name not in steps else np.asarray(steps[name])
        if len(x) != len(values):
            raise ValueError(f"plot_loss_curves: {len(x)} steps for {len(values)} values of {name}")
        ax.plot(x, values, lw=0.5, alpha=0.4, label=name)
        if len(values):
            window = max(1, int(len(values) * SMOOTH_FRACTION))
            ax.plot(x, moving_average(values, window), lw=1.5, label=f"mean of {window}")
        ax.set_ylabel(name)
        ax.legend(fontsize=7, loc="upper right")
    fig.axes[-1].set_xlabel("step")
    fig.tight_layout()
    return _save(fig, out_png)


SupportPanel = tuple[str, np.ndarray, np.ndarray, Sequence[float]]
QueryPanel = tuple[str, np.ndarray, "np.ndarray | None", np.ndarray, Sequence[float]]


def plot_support_query(support_rows: Sequence[Sequence[SupportPanel]], query_row: Sequence[QueryPanel],
                       title: str, out_png: str | Path) -> Path:
    """A grid: one row per support shot, then the query row, in radiological display.

    Args:
        support_rows: per shot, panels (title, image H x W, organ mask H x W, direction).
        query_row: panels (title, image H x W, ground truth H x W or None, prediction H x W,
            direction).
        title: the figure's title; the display convention and the contour colours are added.
        out_png: the PNG to write (atomically).
    ``direction`` is the ``GetDirection()`` of the panel's volume, stored as H x W x Z with rows
    along index axis j (:mod:`util.radiological`).
    """
    n_cols = max([len(r) for r in support_rows] + [len(query_row), 1])
    n_rows = len(support_rows) + (1 if query_row else 0)
    # constrained layout keeps every panel title clear of the row above (tight_layout let the
    # images of one row cover the titles of the next)
    fig = Figure(figsize=(PANEL_IN * n_cols, PANEL_IN * n_rows), layout="constrained")
    orientations = []
    for r, row in enumerate(support_rows):
        for k, (name, img, mask, direction) in enumerate(row):
            orientations.append(_panel(fig.add_subplot(n_rows, n_cols, r * n_cols + k + 1), img, name,
                                       [(mask, SUPPORT_COLOUR)], direction))
    for k, (name, img, gt, pred, direction) in enumerate(query_row):
        contours = ([(gt, GT_COLOUR)] if gt is not None else []) + [(pred, PRED_COLOUR)]
        orientations.append(_panel(fig.add_subplot(n_rows, n_cols, len(support_rows) * n_cols + k + 1),
                                   img, name, contours, direction))
    width = int(PANEL_IN * n_cols * TITLE_CHARS_PER_IN)
    lines = [line for text in (f"{title}  (support: yellow, truth: green, prediction: red)",
                               orientation_caption(orientations))
             for line in textwrap.wrap(text, width)]
    fig.set_size_inches(PANEL_IN * n_cols, PANEL_IN * n_rows + TITLE_LINE_IN * (len(lines) + 1))
    fig.suptitle("\n".join(lines), fontsize=TITLE_FONTSIZE)
    return _save(fig, out_png)
