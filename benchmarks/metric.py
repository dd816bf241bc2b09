"""Metric.record (bincount) against a set-of-pixel-tuples count of the same TP/FP/FN, on 256 x 256
binary slices as validation records them (``labels=[c]``). Target: at least 20x.

``python -m benchmarks.metric [--quick]``
"""
from __future__ import annotations

import sys
import time

import numpy as np

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


def run(quick: bool = False) -> dict:
    n = 4 if quick else 64
    preds, gts = _slices(n, seed=0)
    label = 2

    start = time.perf_counter()
    old = np.zeros((3, label + 1))
    for p, g in zip(preds, gts):
        tp, fp, fn = _set_counts(p, g, [label], label + 1)
        old += np.nan_to_num(np.stack([tp, fp, fn]))
    t_sets = time.perf_counter() - start

    metric = Metric(max_label=label, n_scans=1)
    repeats = 1 if quick else 5
    start = time.perf_counter()
    for _ in range(repeats):
        metric.reset()
        for p, g in zip(preds, gts):
            metric.record(p, g, labels=[label])
    t_counts = (time.perf_counter() - start) / repeats

    if not np.array_equal(metric.counts[0].T, old):
        raise RuntimeError("benchmarks.metric: bincount and set counts disagree")
    ratio = t_sets / t_counts
    return {"name": "metric", "what": f"Metric.record vs sets of pixel tuples, {n} slices {SIZE}x{SIZE}",
            "ratio": ratio, "target": f">= {TARGET:g}x",
            "details": f"sets {t_sets * 1e3 / n:.2f} ms/slice, bincount {t_counts * 1e3 / n:.3f} ms/slice"}


if __name__ == "__main__":
    res = run(quick="--quick" in sys.argv[1:])
    print(f"{res['name']}: {res['ratio']:.1f}x (target {res['target']}); {res['details']}")
