"""Superpixel episode dataset (SPEC.md §3; §8 rows "superpixel draw", "slice sampling",
"epoch length", "randomness"), on hand-built arrays and the tiny dataset of tests/tinydata.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.cards import load_card, scan_ids_in
from dataloaders.episodes import episode_loader
from dataloaders.folds import split_fold
from dataloaders.superpix_dataset import SuperpixelDataset, draw_superpixel, resolve_slice
from tests.tinydata import build_tiny_dataset, write_hwz


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "chaos", "CHAOST2", depth=4)


@pytest.fixture(scope="module")
def sabs(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "sabs", "SABS", hw=32, depth=3)


def make(tiny, **kw):
    card = load_card(tiny.card.name + "_Superpix")
    _, train = split_fold(card, scan_ids_in(card, tiny.data_dir), 0, 1)
    kw.setdefault("seed", 1234)
    return SuperpixelDataset(card, tiny.data_dir, train, **kw), train


# -- slice resolution and the superpixel draw (pure functions) -----------------------------------
def test_item_maps_to_slice_modulo_n_and_skips_slices_without_superpixels():
    max_ids = np.array([5, 1, 0, 7, 3])        # slices 1 (max id 1) and 2 (none) are unusable
    excluded = np.zeros(5, bool)
    g = np.random.default_rng(0)
    assert [resolve_slice(i, max_ids, excluded, 1000, g) for i in (0, 3, 4, 5, 8, 9)] == [0, 3, 4, 0, 3, 4]
    assert resolve_slice(1, max_ids, excluded, 1000, g) == 3    # 1 -> 2 -> 3: next slice
    assert resolve_slice(6, max_ids, excluded, 1000, g) == 3    # 6 % 5 = 1 -> 3
    wrap = np.array([4, 4, 0])
    assert resolve_slice(2, wrap, np.zeros(3, bool), 10, g) == 0   # past the last slice: the first
    with pytest.raises(ValueError, match="above 1"):
        resolve_slice(0, np.array([1, 0, 1]), np.zeros(3, bool), 10, g)


def test_setting2_replacement_draws_from_zero_to_len_minus_two_mod_n():
    """An excluded slice is replaced by a draw ``d`` in [0, L - 2], taken modulo the slice count,
    then moved forward past unusable slices, redrawn while excluded. Hand-worked case: 5 slices,
    slice 2 unusable, slice 3 excluded, L = 7, so d in {0..5} and d % 5 = 0, 1, 2, 3, 4, 0:
    0 twice, 1 and 4 once, 2 (-> 3) and 3 redrawn. Outcome: 0 with 1/2, 1 and 4 with 1/4 each.
    Were L - 1 = 6 drawable too (6 % 5 = 1), 1 would come with 2/5 instead."""
    max_ids = np.array([5, 5, 0, 5, 5])
    excluded = np.array([False, False, False, True, False])
    n = 4000
    got = [resolve_slice(3, max_ids, excluded, 7, np.random.default_rng(seed)) for seed in range(n)]
    assert set(got) == {0, 1, 4}
    share = {z: got.count(z) / n for z in (0, 1, 4)}
    assert share[0] == pytest.approx(0.5, abs=0.03)          # ~ 4 standard deviations
    assert share[1] == pytest.approx(0.25, abs=0.03) and share[4] == pytest.approx(0.25, abs=0.03)
    # the generator passed in is the only randomness
    assert got[:20] == [resolve_slice(3, max_ids, excluded, 7, np.random.default_rng(s)) for s in range(20)]


def test_superpixel_id_drawn_from_one_to_max_exclusive():
    sp = np.array([[1, 2], [3, 4]])
    ids = {draw_superpixel(sp, 4, np.random.default_rng(s))[0] for s in range(200)}
    assert ids == {1, 2, 3}                      # the largest id is never drawn (kept)
    sid, mask = draw_superpixel(sp, 4, np.random.default_rng(1))
    np.testing.assert_array_equal(mask, sp == sid)


def test_absent_id_gives_empty_mask_unless_redrawn():
    sp = np.array([[0, 1], [3, 3]])              # id 2 absent; draws come from {1, 2}
    empties = [not draw_superpixel(sp, 3, np.random.default_rng(s))[1].any() for s in range(100)]
    assert 20 < sum(empties) < 80
    for s in range(100):
        sid, mask = draw_superpixel(sp, 3, np.random.default_rng(s), redraw_empty=True)
        assert sid == 1 and mask.sum() == 1


# -- the dataset on files ------------------------------------------------------------------------
def test_episode_layout_and_content_without_augmentation(chaos):
    ds, train = make(chaos, which_aug="none", exclude_cls_list=[])
    ep = ds[5]
    img = ep["support_images"][0][0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32
    assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
    vol = chaos.read("image", ep["scan_id"]).astype(np.float64)
    want = ((vol - vol.mean()) / vol.std())[..., ep["z_id"]]     # MR: per-volume z-score
    np.testing.assert_allclose(img[0].numpy(), want, rtol=1e-5, atol=1e-5)
    sp = chaos.superpix(ep["scan_id"])[..., ep["z_id"]]
    fg = ep["support_mask"][0][0]["fg_mask"].numpy()
    np.testing.assert_array_equal(fg, (sp == ep["superpix_id"]).astype(np.float32))
    np.testing.assert_array_equal(ep["support_mask"][0][0]["bg_mask"].numpy(), 1 - fg)
    assert ep["query_labels"][0].dtype == torch.int64
    np.testing.assert_array_equal(ep["query_labels"][0].numpy(), fg)
    assert torch.equal(ep["query_images"][0], img)
    assert 1 <= ep["superpix_id"] < sp.max() and ep["empty_mask"] is False


def test_episode_is_a_pure_function_of_seed_index_rank(chaos):
    a, _ = make(chaos)
    b, _ = make(chaos)
    r1, _ = make(chaos, rank=1)
    for i in (0, 7, 1003):
        ea, eb = a[i], b[i]
        assert torch.equal(ea["query_images"][0], eb["query_images"][0])
        assert torch.equal(ea["support_mask"][0][0]["fg_mask"], eb["support_mask"][0][0]["fg_mask"])
    assert not torch.equal(a[0]["query_images"][0], r1[0]["query_images"][0])
    assert not torch.equal(a[0]["query_images"][0], a[0]["support_images"][0][0])  # two copies
    # any worker count, any start: the same episodes
    direct = [a[i]["query_images"][0] for i in range(3, 7)]
    for workers in (0, 2):
        loader = episode_loader(a, start=3, batch_size=2, num_workers=workers)
        it = iter(loader)
        batches = [next(it), next(it)]
        del it
        got = [q for b in batches for q in b["query_images"][0]]
        assert all(torch.equal(x, y) for x, y in zip(got, direct))
        assert batches[0]["index"].tolist() == [3, 4]


def test_setting2_never_trains_on_excluded_slices(chaos):
    ds, train = make(chaos, which_aug="none", exclude_cls_list=[2, 3])
    label_z = {sid: {z for z in range(chaos.depth) if np.isin(chaos.label(sid)[..., z], [2, 3]).any()}
               for sid in train}
    assert any(label_z.values())
    seen = [(ds[i]["scan_id"], ds[i]["z_id"]) for i in range(60)]
    assert all(z not in label_z[s] for s, z in seen)
    ds1, _ = make(chaos, which_aug="none", exclude_cls_list=[])
    assert any(z in label_z[s] for s, z in [(ds1[i]["scan_id"], ds1[i]["z_id"]) for i in range(60)])


def test_epoch_length_rules_and_short_epochs(chaos, sabs):
    ct, train = make(sabs, which_aug="none", exclude_cls_list=[])
    assert len(ct) == len(train) * sabs.depth                     # CT: number of slices
    mr, _ = make(chaos, which_aug="none", exclude_cls_list=[], max_iters_per_load=3)
    assert len(mr) == 3                                           # MR: max_iters_per_load
    first = {(mr[i]["scan_id"], mr[i]["z_id"]) for i in range(3)}
    assert first == {(mr.scan_ids[0], z) for z in range(3)}       # items 0..2 -> slices 0..2
    assert [mr[i]["epoch"] for i in (2, 3, 5, 6)] == [0, 1, 1, 2]   # wraps around, any length works


def test_ct_uses_fold_global_normalisation(sabs):
    ds, train = make(sabs, which_aug="none", exclude_cls_list=[])
    raw = np.concatenate([sabs.read("image", s).astype(np.float64).ravel() for s in train])
    assert ds.stats.mean == pytest.approx(raw.mean()) and ds.stats.std == pytest.approx(raw.std())
    allv = np.concatenate([im.ravel() for im in ds.images]).astype(np.float64)
    assert abs(allv.mean()) < 1e-4 and allv.std() == pytest.approx(1.0, abs=1e-4)
    single = ds.images[0].astype(np.float64)
    assert abs(single.mean()) > 1e-3                              # not z-scored per volume


def test_single_superpixel_slices_are_skipped_and_empty_masks_counted(tmp_path):
    tiny = build_tiny_dataset(tmp_path / "c", "CHAOST2", depth=3, hw=32, block=8)
    card = load_card("CHAOST2_Superpix")
    _, train = split_fold(card, scan_ids_in(card, tiny.data_dir), 0, 1)
    first = train[0]
    sp = tiny.superpix(first)
    sp[..., 0] = (sp[..., 0] > 0).astype(np.int32)                # slice 0: one superpixel (max id 1)
    sp[..., 1] = np.where(sp[..., 1] % 2 == 0, 0, sp[..., 1])     # slice 1: even ids absent
    write_hwz(sp, tiny.data_dir / card.file("superpix", id=first, scale="MIDDLE"))
    ds = SuperpixelDataset(card, tiny.data_dir, train, seed=3, which_aug="none", exclude_cls_list=[],
                           max_iters_per_load=2)
    eps = [ds[i] for i in range(40)]
    assert all((e["scan_id"], e["z_id"]) != (first, 0) for e in eps)
    on_one = [e for e in eps if (e["scan_id"], e["z_id"]) == (first, 1)]
    assert on_one and any(e["empty_mask"] for e in on_one)
    for e in eps:
        assert e["empty_mask"] == (e["support_mask"][0][0]["fg_mask"].sum().item() == 0)
    redraw = SuperpixelDataset(card, tiny.data_dir, train, seed=3, which_aug="none",
                               exclude_cls_list=[], max_iters_per_load=2, redraw_empty_superpix=True)
    assert not any(redraw[i]["empty_mask"] for i in range(40))


def test_scan_per_load_draws_scans_per_sub_epoch(chaos):
    ds, train = make(chaos, which_aug="none", exclude_cls_list=[], max_iters_per_load=6, scan_per_load=2)
    per_epoch = [{ds[e * 6 + i]["scan_id"] for i in range(6)} for e in range(4)]
    assert all(1 <= len(s) <= 2 for s in per_epoch)
    assert len(set.union(*per_epoch)) > 2                          # other scans in later sub-epochs
    assert [ds[i]["epoch"] for i in (5, 6, 23)] == [0, 1, 3]
