"""util.metric: confusion counts, the original Metric interface, hand-computed cases and the
recorded fixture ``tests/fixtures/metric/metric_seed1.npz``."""
from __future__ import annotations

import numpy as np
import pytest

from tests.refnet import REFERENCE
from util.metric import (
    IGNORE_INDEX,
    Metric,
    confusion_counts,
    dice_from_counts,
    precision_from_counts,
    recall_from_counts,
    reduce_raw,
)

FIXTURE = REFERENCE / "metric" / "metric_seed1.npz"


def test_confusion_counts_two_by_two():
    # pred [[1,0],[0,1]] vs truth [[1,0],[1,1]]: class 1 TP=2 FP=0 FN=1 -> Dice 4/5 = 0.8;
    # class 0: TP=1 (top right), FP=1 (bottom left), FN=0 -> Dice 2/3
    pred = np.array([[1, 0], [0, 1]])
    gt = np.array([[1, 0], [1, 1]])
    counts = confusion_counts(pred, gt, [0, 1])
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [[1, 1, 0], [2, 0, 1]])
    np.testing.assert_allclose(dice_from_counts(counts), [2 / 3, 0.8])


def test_confusion_counts_three_by_three_multiclass_and_ignore():
    # truth           pred
    # 0 1 1           0 1 2
    # 2 2 255         2 1 1
    # 0 0 1           0 2 1
    # class 1: pred at (0,1),(0,2)?no (0,2)=2 ... pred==1 at (0,1),(1,1),(1,2),(2,2);
    #   (1,2) has target 255 -> not a prediction; TP: (0,1),(2,2) = 2; FP: (1,1) = 1;
    #   FN: truth 1 at (0,1),(0,2),(2,2) minus TP -> (0,2) = 1
    # class 2: pred==2 at (0,2),(1,0),(2,1); TP (1,0) = 1; FP (0,2),(2,1) = 2; FN (1,1) = 1
    # class 0: pred==0 at (0,0),(2,0); TP 2; FP 0; FN truth 0 at (2,1) -> 1
    gt = np.array([[0, 1, 1], [2, 2, IGNORE_INDEX], [0, 0, 1]])
    pred = np.array([[0, 1, 2], [2, 1, 1], [0, 2, 1]])
    counts = confusion_counts(pred, gt, [0, 1, 2])
    np.testing.assert_array_equal(counts, [[2, 0, 1], [2, 1, 1], [1, 2, 1]])
    np.testing.assert_allclose(precision_from_counts(counts), [1.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(recall_from_counts(counts), [2 / 3, 2 / 3, 0.5])


def test_confusion_counts_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)), [0, 1])


def test_confusion_counts_rejects_non_integer_maps():
    with pytest.raises(ValueError, match="non-integer"):
        confusion_counts(np.full((2, 2), 0.5), np.zeros((2, 2)), [0, 1])


def test_metric_binary_record_maps_to_label_slot():
    # labels=[3]: pixel value 1 is label 3; one scan, record twice (counts add up)
    m = Metric(max_label=4, n_scans=2)
    pred = np.array([[1, 0], [0, 1]])
    gt = np.array([[1, 0], [1, 1]])
    m.record(pred, gt, labels=[3], n_scan=1)
    m.record(pred, gt, labels=[3], n_scan=1)
    np.testing.assert_array_equal(m.counts[1, 3], [4, 0, 2])
    assert m.counts[0].sum() == 0 and m.counts[1, [1, 2, 4]].sum() == 0
    dice_c, dice_m = m.get_mDice(labels=[3], n_scan=1)
    np.testing.assert_allclose(dice_c, [0.8])
    assert dice_m == pytest.approx(0.8)
    # scan 0 never recorded: NaN Dice, and the mean over scans is NaN too (original behaviour)
    cls_mean, _, mean, _, raw = m.get_mDice(labels=[3], give_raw=True)
    assert np.isnan(raw[0, 0]) and raw[1, 0] == pytest.approx(0.8)
    assert np.isnan(cls_mean[0]) and np.isnan(mean)
    m.reset()
    assert m.counts.sum() == 0


def test_metric_precision_nan_when_nothing_predicted():
    m = Metric(max_label=1, n_scans=1)
    m.record(np.zeros((3, 3)), np.eye(3), labels=[1])
    prec, _, rec, _ = m.get_mPrecRecall(labels=[1], n_scan=0)
    assert np.isnan(prec[0]) and rec[0] == 0.0


def test_metric_rejects_bad_scan_index():
    m = Metric(max_label=2, n_scans=3)
    with pytest.raises(ValueError, match="n_scan=3"):
        m.record(np.zeros((2, 2)), np.zeros((2, 2)), labels=[1], n_scan=3)


def test_metric_matches_reference_fixture():
    ref = np.load(FIXTURE)
    n_scans = int(ref["scan"].max()) + 1
    label = int(ref["label"])
    m = Metric(max_label=label, n_scans=n_scans)
    for pred, gt, scan in zip(ref["preds"], ref["gts"], ref["scan"]):
        m.record(pred, gt, labels=[label], n_scan=int(scan))
    labels = [int(x) for x in ref["labels_eval"]]
    class_dice, _, mean_dice, _, raw_dice = m.get_mDice(labels=labels, give_raw=True)
    (class_prec, _, mean_prec, _, class_rec, _, mean_rec, _, raw_prec, raw_rec
     ) = m.get_mPrecRecall(labels=labels, give_raw=True)
    for name, got in [("classDice", class_dice), ("meanDice", mean_dice), ("rawDice", raw_dice),
                      ("classPrec", class_prec), ("meanPrec", mean_prec), ("rawPrec", raw_prec),
                      ("classRec", class_rec), ("meanRec", mean_rec), ("rawRec", raw_rec)]:
        np.testing.assert_allclose(got, ref[name], rtol=1e-12, err_msg=name)


def test_reduce_raw_equals_metric_and_leaves_out_invalid():
    raw = np.array([[0.5, 0.7], [0.9, 0.1], [0.3, np.nan]])
    cls_mean, cls_std, mean, std = reduce_raw(raw[:2])
    np.testing.assert_allclose(cls_mean, [0.7, 0.4])
    np.testing.assert_allclose(cls_std, [0.2, 0.3])
    assert mean == pytest.approx(0.55) and std == pytest.approx(0.05)   # scans 0.6, 0.5
    # scan 2 lacks class 1 (invalid): class 1 over scans 0, 1 only; scan 2 contributes 0.3
    valid = np.array([[True, True], [True, True], [True, False]])
    cls_mean, _, mean, _ = reduce_raw(raw, valid)
    np.testing.assert_allclose(cls_mean, [1.7 / 3, 0.4])
    assert mean == pytest.approx((0.6 + 0.5 + 0.3) / 3)
    # with everything valid the NaN propagates, as in the original
    assert np.isnan(reduce_raw(raw)[0][1])
