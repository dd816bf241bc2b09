"""Folds, label groups and cards (SPEC.md §1)."""
from __future__ import annotations

import pytest

from data.cards import load_card
from dataloaders import folds
from dataloaders.folds import excluded_slices, split_fold, support_scan_ids

CHAOS_IDS = [1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39]


def test_chaos_fold0_one_shot():
    card = load_card("CHAOST2_Superpix")
    val, train = split_fold(card, CHAOS_IDS, 0, n_shots=1)
    assert val == [1, 2, 3, 5, 8]
    assert support_scan_ids(val, [-1]) == [8]
    assert support_scan_ids(val, [4]) == [8]       # the launchers' support_idx=[4]
    assert sorted(train + val) == CHAOS_IDS and not set(train) & set(val)


def test_last_fold_wraps_around():
    card = load_card("CHAOST2")
    val, _ = split_fold(card, CHAOS_IDS, 4, n_shots=1)
    assert val == [36, 37, 38, 39, 1]
    val3, _ = split_fold(card, CHAOS_IDS, 4, n_shots=3)
    assert val3 == [36, 37, 38, 39, 1, 2, 3]


def test_sabs_folds_and_groups():
    card = load_card("SABS_Superpix")
    ids = list(range(30))
    val, train = split_fold(card, ids, 1)
    assert val == [6, 7, 8, 9, 10, 11, 12] and len(train) == 23
    assert folds.test_labels(card, 0) == [2, 3]
    assert folds.test_labels(card, 1) == [1, 6]


def test_label_groups_and_ranges():
    card = load_card("CHAOST2")
    assert folds.test_labels(card, 0) == [2, 3]
    assert folds.test_labels(card, 1) == [1, 4]
    with pytest.raises(ValueError, match="label_sets=2"):
        folds.test_labels(card, 2)
    with pytest.raises(ValueError, match="eval_fold=5"):
        split_fold(card, CHAOS_IDS, 5)
    with pytest.raises(ValueError, match="support_idx"):
        support_scan_ids([1, 2], [5])


def test_setting2_exclusion_from_classmap():
    card = load_card("CHAOST2")
    classmap = {"RK": {"1": [3, 4]}, "LK": {"1": [4, 5], "2": [7]}, "LIVER": {"1": [0]}}
    assert excluded_slices(card, classmap, [2, 3]) == {1: {3, 4, 5}, 2: {7}}
    with pytest.raises(ValueError, match=r"label\(s\) \[7\]"):
        excluded_slices(card, classmap, [7])


def test_unknown_dataset_lists_cards():
    with pytest.raises(ValueError, match="known cards: .*CHAOST2"):
        load_card("NOPE_Superpix")
