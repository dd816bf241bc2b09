"""Manual-label episode dataset (supervised baseline, SPEC.md §3 last paragraph) on the tiny
dataset, whose organs and slices are known in closed form (tests/tinydata.py)."""
from __future__ import annotations

import numpy as np
import pytest

from data.cards import load_card, scan_ids_in
from dataloaders import folds
from dataloaders.folds import split_fold
from dataloaders.manual_dataset import ManualLabelDataset, training_classes
from tests.tinydata import build_tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "chaos", "CHAOST2", hw=32, depth=4,
                              block=8)


def make(tiny, **kw):
    card = load_card("CHAOST2")
    _, train = split_fold(card, scan_ids_in(card, tiny.data_dir), 0, 1)
    kw.setdefault("test_labels", folds.test_labels(card, 0))
    return ManualLabelDataset(card, tiny.data_dir, train, seed=9, min_fg_data=1, **kw)


def test_training_classes_leave_out_tested_and_excluded_organs():
    card = load_card("CHAOST2")
    assert training_classes(card, [2, 3], []) == [1, 4]
    assert training_classes(card, [1, 4], [2]) == [3]
    with pytest.raises(ValueError, match="exclude_cls_list"):
        training_classes(card, [2, 3], [7])


def test_episode_pairs_two_different_slices_of_one_class(tiny):
    ds = make(tiny, which_aug="none")
    seen = set()
    for i in range(30):
        ep = ds[i]
        cls = ep["class_id"]
        seen.add(cls)
        fg = ep["support_mask"][0][0]["fg_mask"].numpy()
        q = ep["query_labels"][0].numpy()
        assert fg.sum() > 0 and q.sum() > 0
        # find the slices by content: the support mask is the class on its slice
        sup_lab = tiny.label(ep["scan_id"])[..., ep["z_id"]]
        np.testing.assert_array_equal(fg, (sup_lab == cls).astype(np.float32))
        assert not np.array_equal(ep["support_images"][0][0].numpy(), ep["query_images"][0].numpy())
    assert seen == {1, 4}                                          # label group 0 trains on 1, 4


def test_setting2_drops_slices_with_excluded_organs(tiny):
    ds = make(tiny, which_aug="none", exclude_cls_list=[2, 3])
    for pool in ds.pools.values():
        for sid, z in pool:
            assert not np.isin(tiny.label(sid)[..., z], [2, 3]).any()
    both = make(tiny, which_aug="none", exclude_cls_list=[])
    assert len(both.pools[1]) > len(ds.pools[1])                  # kidneys share slices with liver


def test_episodes_are_pure_and_augmented(tiny):
    a, b = make(tiny), make(tiny)
    ea, eb = a[17], b[17]
    np.testing.assert_array_equal(ea["query_images"][0].numpy(), eb["query_images"][0].numpy())
    assert set(np.unique(ea["query_labels"][0].numpy())) <= {0, 1}


def test_missing_class_map_names_the_command(tiny, tmp_path):
    card = load_card("CHAOST2")
    _, train = split_fold(card, scan_ids_in(card, tiny.data_dir), 0, 1)
    with pytest.raises(FileNotFoundError, match="data.class_index.*--min-tp 7"):
        ManualLabelDataset(card, tiny.data_dir, train, seed=1, min_fg_data=7)
