"""Metric.record (bincount) against a set-of-pixel-tuples count of the same TP/FP/FN, on 256 x 256
binary slices as validation records them (``labels=[c]``), alternating in one process, both warm
(an untimed round first); the counts of every slice must be equal. Target: at least 20x.

``python -m benchmarks.metric [--quick] [--rounds N]``
"""
from __future__ import annotations

import statistics
import sys

import numpy as np

from benchmarks.common import alternate, bench_main, row
from util.metric import IGNORE_INDEX, Metric

TARGET = 20.0
SIZE = 256


def _set_counts(pred: np.ndarray, target: np.ndarray, labels: list[int], n_labels: int):
    """The old way: pixel coordinates as Python sets of tuples, intersected per class."""
    tp = np.full(n_labels, np.nan)
    fp = np.full(n_labels, np.nan)
    fn = np.full(n_labels, np.nan)
    for j, label in enumerate([0] + labels):
        idx = np.where(np.logical_and(pred == j, target != IGNORE_INDEX))
        pred_set = set(zip(idx[0].tolist(), idx[1].tolist()))
        idx = np.where(target == j)
        target_set = set(zip(idx[0].tolist(), idx[1].tolist()))
        tp[label] = len(pred_set & target_set)
        fp[label] = len(pred_set - target_set)
        fn[label] = len(target_set - pred_set)
    return tp, fp, fn


def _slices(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Organ-like binary slices: a disc of truth and a shifted, noisier disc of prediction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    preds, gts = [], []
    for _ in range(n):
        cy, cx, r = rng.integers(64, 192), rng.integers(64, 192), rng.integers(10, 60)
        gt = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        pred = ((yy - cy - 3) ** 2 + (xx - cx + 2) ** 2 <= (r + 4) ** 2) ^ (rng.random((SIZE, SIZE)) < 0.01)
        preds.append(pred.astype(np.uint8))
        gts.append(gt.astype(np.uint8))
    return np.stack(preds), np.stack(gts)


def run(quick: bool = False, rounds: int | None = None) -> dict:
    """Both counts on the same slices, alternating (an untimed round first); the TP/FP/FN of
    every slice must be equal."""
    n = 4 if quick else 64
    preds, gts = _slices(n, seed=0)
    label = 2
    metric = Metric(max_label=label, n_scans=n)

    def sets() -> np.ndarray:                          # slices x 3 x labels
        return np.stack([np.nan_to_num(np.stack(_set_counts(p, g, [label], label + 1)))
                         for p, g in zip(preds, gts)])

    def counts() -> np.ndarray:
        metric.reset()
        for i, (p, g) in enumerate(zip(preds, gts)):
            metric.record(p, g, labels=[label], n_scan=i)
        return np.transpose(metric.counts[:n], (0, 2, 1)).astype(np.float64)

    timings, old, new = alternate(sets, counts, rounds or (1 if quick else 5))
    agree = bool(np.array_equal(old, new))
    return row("metric", f"set-of-tuples counts vs Metric.record (bincount), {n} slices {SIZE}x{SIZE}",
               timings.ratio, f">= {TARGET:g}x", agree, "TP, FP, FN of every slice and class equal",
               f"{timings.text()}; sets {statistics.median(timings.baseline) * 1e3 / n:.2f} ms/slice, "
               f"bincount {statistics.median(timings.ours) * 1e3 / n:.3f} ms/slice")


def main(argv: list[str] | None = None) -> int:
    return bench_main("metric", __doc__.split("\n\n")[0], run, argv,
                      quick_help="4 slices, one timed round", rounds_default=5)


if __name__ == "__main__":
    sys.exit(main())
