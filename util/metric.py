"""Segmentation metrics: confusion counts by array counting, the original ``Metric`` accumulator
(docs/method.md, 'Validation protocol'), and surface distances (HD95, ASSD) in millimetres.

Counting rules of the original validation, kept:
- ``record(pred, target, labels=[c])`` takes binary maps: the value at position ``j`` of
  ``[0] + labels`` (0 or 1) is scored as label ``labels[j - 1]`` (0: background). With
  ``labels=None`` the maps hold label values ``0..max_label``.
- A predicted pixel counts only where the target is not ``IGNORE_INDEX`` (255).
- Per scan, TP/FP/FN are summed over every recorded slice; Dice ``2TP / (2TP + FP + FN)``,
  precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, IoU ``TP / (TP + FP + FN)``.
- Empty cases: a class never recorded for a scan, or recorded with no TP, FP or FN, gives NaN
  Dice and recall for that scan; precision is NaN when nothing was predicted as the class on the
  counted slices. Means over scans are plain means, so a NaN propagates (as in the original).

Surface distances follow MONAI's definitions (``monai.metrics.hausdorff_distance``,
``surface_distance``): the surface of a mask is the mask XOR its binary erosion (scipy's default
cross-shaped structure, voxels on the array border belong to the surface); the directed distances
of one surface are the Euclidean distances in mm (``sampling=spacing``) from each of its voxels to
the nearest voxel of the other surface. HD95 is the larger of the two directed 95th percentiles
(not the percentile of the pooled distances); ASSD is the mean of both directed sets concatenated.
Both masks empty: NaN; exactly one empty: inf.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["IGNORE_INDEX", "HD_PERCENTILE", "confusion_counts", "dice_from_counts",
           "precision_from_counts", "recall_from_counts", "iou_from_counts", "reduce_raw", "Metric",
           "surface_distances", "hd95", "assd", "check_spacing"]

log = logging.getLogger(__name__)

IGNORE_INDEX = 255      # ignored target value
HD_PERCENTILE = 95.0    # HD95 = max of the two directed 95th percentiles
TP, FP, FN = 0, 1, 2    # column order of the count arrays


def _as_int_map(arr: np.ndarray, name: str) -> np.ndarray:
    """An integer-valued array as int64 (float label maps are accepted when integral)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind != "f":
        raise ValueError(f"{name}: expected an integer or float label map, got dtype {arr.dtype}")
    out = arr.astype(np.int64)
    if not np.array_equal(out, arr):
        raise ValueError(f"{name}: label map holds non-integer values")
    return out


def _index_map(arr: np.ndarray, values: Sequence[int], other: int) -> np.ndarray:
    """Position of each pixel's value in ``values`` (``other`` for any value not listed)."""
    vmax = max(max(values), 0)
    lut = np.full(vmax + 2, other, dtype=np.int64)
    lut[np.asarray(values, dtype=np.int64)] = np.arange(len(values))
    clipped = np.where((arr >= 0) & (arr <= vmax), arr, vmax + 1)
    return lut[clipped]


def confusion_counts(pred: np.ndarray, target: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """TP, FP and FN of every value in ``values``, by one bincount.

    Args:
        pred: predicted label map, any shape (e.g. H x W), integer-valued.
        target: ground truth of the same shape; ``IGNORE_INDEX`` pixels are never predicted.
        values: the pixel values to score (e.g. ``[0, 1]`` for a binary map).

    Returns:
        int64 array ``len(values) x 3``: TP, FP, FN per value.

    Raises:
        ValueError: shapes differ, or a map is not integer-valued.
    """
    if np.shape(pred) != np.shape(target):
        raise ValueError(f"pred shape {np.shape(pred)} differs from target shape {np.shape(target)}")
    values = [int(v) for v in values]
    k = len(values)
    p = _index_map(_as_int_map(pred, "pred"), values, k).ravel()          # 0..k (k: other)
    t_raw = _as_int_map(target, "target")
    t = _index_map(t_raw, values, k).ravel()                                # 0..k
    if IGNORE_INDEX not in values:
        t = np.where(t_raw.ravel() == IGNORE_INDEX, k + 1, t)               # k + 1: ignored
    cm = np.bincount(p * (k + 2) + t, minlength=(k + 1) * (k + 2)).reshape(k + 1, k + 2)
    diag = cm[np.arange(k), np.arange(k)]
    out = np.empty((k, 3), dtype=np.int64)
    out[:, TP] = diag
    out[:, FP] = cm[:k, : k + 1].sum(axis=1) - diag                         # ignored target excluded
    out[:, FN] = cm[:, :k].sum(axis=0) - diag
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """``2TP / (2TP + FP + FN)`` over the last axis (TP, FP, FN), float64; NaN when 0 / 0."""
    c = np.asarray(counts)
    return _ratio(2 * c[..., TP], 2 * c[..., TP] + c[..., FP] + c[..., FN])


def precision_from_counts(counts: np.ndarray) -> np.ndarray:
    """``TP / (TP + FP)``; NaN when nothing is predicted."""
    c = np.asarray(counts)
    return _ratio(c[..., TP], c[..., TP] + c[..., FP])


def recall_from_counts(counts: np.ndarray) -> np.ndarray:
    """``TP / (TP + FN)``; NaN when the class is absent from the target."""
    c = np.asarray(counts)
    return _ratio(c[..., TP], c[..., TP] + c[..., FN])


def iou_from_counts(counts: np.ndarray) -> np.ndarray:
    """``TP / (TP + FP + FN)``; NaN when 0 / 0."""
    c = np.asarray(counts)
    return _ratio(c[..., TP], c[..., TP] + c[..., FP] + c[..., FN])


def reduce_raw(raw: np.ndarray, valid: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Summaries of a scans x classes table as ``Metric.get_mDice`` computes them: (class mean
    over scans, class std, mean over scans of the per-scan class mean, its std).

    Args:
        raw: scans x classes values (NaN where undefined; NaN propagates into the means).
        valid: scans x classes booleans; False entries (a query scan without that organ) are left
            out of every mean, and a scan with no valid class is left out of the overall mean.
            None: all valid (then identical to the original reduction).
    """
    raw = np.asarray(raw, dtype=np.float64)
    if valid is None:
        valid = np.ones(raw.shape, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != raw.shape:
        raise ValueError(f"valid mask shape {valid.shape} differs from the table's {raw.shape}")
    n_cls = raw.shape[1]
    cls_mean = np.array([raw[valid[:, c], c].mean() if valid[:, c].any() else np.nan
                         for c in range(n_cls)])
    cls_std = np.array([raw[valid[:, c], c].std() if valid[:, c].any() else np.nan
                        for c in range(n_cls)])
    per_scan = np.array([raw[s, valid[s]].mean() for s in range(raw.shape[0]) if valid[s].any()])
    if per_scan.size == 0:
        return cls_mean, cls_std, float("nan"), float("nan")
    return cls_mean, cls_std, float(per_scan.mean()), float(per_scan.std())


class Metric:
    """Per-scan TP/FP/FN accumulator with the original interface (kept for compatibility).

    ``counts`` is an int64 array ``n_scans x (max_label + 1) x 3``; every ``get_*`` only reduces it,
    so ranks can sum their counts (``counts`` in, :meth:`add_counts`) before computing anything.
    """

    def __init__(self, max_label: int = 20, n_scans: int | None = None) -> None:
        self.labels = list(range(int(max_label) + 1))
        self.n_scans = 1 if n_scans is None else int(n_scans)
        if self.n_scans < 1:
            raise ValueError(f"Metric: n_scans must be at least 1, got {n_scans}")
        self.counts = np.zeros((self.n_scans, len(self.labels), 3), dtype=np.int64)

    def reset(self) -> None:
        self.counts[...] = 0

    def _scan_index(self, n_scan: int | None) -> int:
        if self.n_scans == 1:
            return 0
        if n_scan is None or not 0 <= int(n_scan) < self.n_scans:
            raise ValueError(f"Metric.record: n_scan={n_scan} is not a scan index 0..{self.n_scans - 1}")
        return int(n_scan)

    def record(self, pred: np.ndarray, target: np.ndarray, labels: Sequence[int] | None = None,
               n_scan: int | None = None) -> None:
        """Add one slice's (or volume's) counts to scan ``n_scan``.

        Args:
            pred, target: label maps of one shape (H x W, or any). With ``labels`` given they
                are binary: value ``j`` stands for ``([0] + labels)[j]``.
            labels: foreground labels scored by this record (None: all ``0..max_label``).
            n_scan: scan index (ignored when the metric holds one scan).
        """
        scan = self._scan_index(n_scan)
        if labels is None:
            slots = self.labels
            values = self.labels
        else:
            slots = [0] + [int(x) for x in labels]
            values = list(range(len(slots)))
        bad = [s for s in slots if not 0 <= s < len(self.labels)]
        if bad:
            raise ValueError(f"Metric.record: labels {bad} exceed max_label={len(self.labels) - 1}")
        self.counts[scan, slots] += confusion_counts(pred, target, values)

    def add_counts(self, counts: np.ndarray) -> None:
        """Add counts of the same shape (e.g. summed over ranks)."""
        counts = np.asarray(counts)
        if counts.shape != self.counts.shape:
            raise ValueError(f"Metric.add_counts: shape {counts.shape}, expected {self.counts.shape}")
        self.counts += counts.astype(np.int64)

    def _labels(self, labels: Sequence[int] | None) -> list[int]:
        return self.labels if labels is None else [int(x) for x in labels]

    def _reduce(self, fn, labels, n_scan, give_raw):
        labs = self._labels(labels)
        if n_scan is not None:
            per_class = fn(self.counts[int(n_scan), labs])
            return per_class, per_class.mean()
        raw = fn(self.counts[:, labs])                     # scans x classes
        per_scan = raw.mean(axis=1)
        out = (raw.mean(axis=0), raw.std(axis=0), per_scan.mean(axis=0), per_scan.std(axis=0))
        return out + (raw,) if give_raw else out

    def get_mDice(self, labels: Sequence[int] | None = None, n_scan: int | None = None,
                  give_raw: bool = False):
        """(class mean over scans, class std, mean over classes then scans, std[, raw scans x
        classes]); for one ``n_scan``: (per-class Dice, mean)."""
        return self._reduce(dice_from_counts, labels, n_scan, give_raw)

    def get_mIoU(self, labels: Sequence[int] | None = None, n_scan: int | None = None,
                 give_raw: bool = False):
        """As :meth:`get_mDice`, with IoU."""
        return self._reduce(iou_from_counts, labels, n_scan, give_raw)

    def get_mPrecRecall(self, labels: Sequence[int] | None = None, n_scan: int | None = None,
                        give_raw: bool = False):
        """(precision class mean, class std, mean, std, recall class mean, class std, mean,
        std[, raw precision, raw recall]); for one ``n_scan``: (precision per class, mean,
        recall per class, mean)."""
        prec = self._reduce(precision_from_counts, labels, n_scan, give_raw)
        rec = self._reduce(recall_from_counts, labels, n_scan, give_raw)
        if n_scan is not None:
            return prec + rec
        out = prec[:4] + rec[:4]
        return out + (prec[4], rec[4]) if give_raw else out


# ---------------------------------------------------------------- surface distances

def check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    """Spacing as ``ndim`` positive floats in array axis order (a scalar applies to every axis).

    Raises:
        ValueError: wrong length or a non-positive value.
    """
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        spacing = (float(spacing),) * ndim
    out = tuple(float(s) for s in spacing)
    if len(out) != ndim:
        raise ValueError(f"spacing {out}: expected {ndim} values (one per array axis), got {len(out)}")
    if not all(s > 0 and np.isfinite(s) for s in out):
        raise ValueError(f"spacing {out}: every value must be positive and finite")
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing_zyx=None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm, pred -> gt and gt -> pred.

    Args:
        pred, gt: binary masks of one shape (Z x H x W, or any ndim), nonzero = inside.
        spacing_zyx: voxel size in mm in array axis order (a scalar for all axes; None: 1).

    Returns:
        (d_pred_gt, d_gt_pred): float64 arrays, one distance per surface voxel of pred (resp. gt)
        to the nearest surface voxel of the other mask. When the other mask is empty the
        distances are inf; an empty mask gives an empty array.

    Raises:
        ValueError: shapes differ, or the spacing does not fit.
    """
    pred = np.asarray(pred) != 0
    gt = np.asarray(gt) != 0
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    spacing = check_spacing(spacing_zyx, pred.ndim)
    union = pred | gt
    if not union.any():
        return np.zeros(0), np.zeros(0)
    # crop to the union's bounding box, one voxel of margin so that erosion sees the outside
    box = tuple(slice(max(int(ix.min()) - 1, 0), int(ix.max()) + 2) for ix in np.nonzero(union))
    sp, sg = _surface(pred[box]), _surface(gt[box])

    def directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if not src.any():
            return np.zeros(0)
        if not dst.any():
            return np.full(int(src.sum()), np.inf)
        edt = ndimage.distance_transform_edt(~dst, sampling=spacing)
        return edt[src]

    return directed(sp, sg), directed(sg, sp)


def _empty_value(d_pg: np.ndarray, d_gp: np.ndarray) -> float | None:
    if d_pg.size == 0 and d_gp.size == 0:
        return float("nan")               # both empty
    if d_pg.size == 0 or d_gp.size == 0:
        return float("inf")               # exactly one empty
    return None


def hd95(pred: np.ndarray, gt: np.ndarray, spacing_zyx=None, percentile: float = HD_PERCENTILE) -> float:
    """95th-percentile Hausdorff distance in mm: ``max(P95(d_pred_gt), P95(d_gt_pred))``
    (MONAI's definition; ``percentile=100`` gives the Hausdorff distance). NaN when both masks are
    empty, inf when exactly one is."""
    d_pg, d_gp = surface_distances(pred, gt, spacing_zyx)
    empty = _empty_value(d_pg, d_gp)
    if empty is not None:
        return empty
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def assd(pred: np.ndarray, gt: np.ndarray, spacing_zyx=None) -> float:
    """Average symmetric surface distance in mm: the mean of both directed distance sets
    concatenated (MONAI ``symmetric=True``). NaN when both masks are empty, inf when one is."""
    d_pg, d_gp = surface_distances(pred, gt, spacing_zyx)
    empty = _empty_value(d_pg, d_gp)
    if empty is not None:
        return empty
    return float(np.concatenate([d_pg, d_gp]).mean())
