"""Superpixel ids, body masks and the class-slice index: hand-computed cases, and faithfulness
to the published CHAOS files (``$ALPNET_CHAOS_DIR``, tests/realdata.py; skipped with the reason
when absent).

The real-scan superpixel test runs a representative subset (the three scans with the lowest
agreement inside the body mask, 99.77-99.99 %, and one reproduced voxel for voxel) to fit the
suite's time budget (about 2 s of CPU per scan); ``python -m benchmarks.pseudolabels`` checks all
20 scans against the same figure. Agreement is measured inside the published body mask: outside
it both files are 0 by construction (about half of the voxels), which would hide differences.
"""
from __future__ import annotations

import json

import numpy as np

from benchmarks.pseudolabels import MIN_AGREEMENT_IN_BODY  # docs/method.md, 'Superpixel pseudolabels'
from data.cards import load_card
from data.class_index import build_classmaps, class_slices, write_class_index
from data.pseudolabels import body_mask, make_pseudolabels, superpixel_ids
from tests.conftest import requires_real_data
from util.io import read_zyx

REAL_SUBSET = (1, 2, 20, 15)   # inside the body 1: 99.767 %, 2: 99.963 %, 20: 99.989 %; 15: identical


def test_superpixel_id_rule_by_hand():
    seg = np.array([[0, 1, 1, 3],
                    [2, 2, 3, 3],
                    [0, 2, 3, 3]])
    mask = np.array([[1, 1, 1, 1],
                     [1, 0, 1, 1],
                     [1, 1, 1, 0]], bool)
    # M = 3 -> 4, id 0 dropped, 1 and 2 kept; outside the mask 0 (segment 2 keeps its id inside)
    expected = np.array([[0, 1, 1, 4],
                         [2, 0, 4, 4],
                         [0, 2, 4, 0]])
    np.testing.assert_array_equal(superpixel_ids(seg, mask), expected)
    assert not superpixel_ids(np.zeros((2, 2), int), np.ones((2, 2), bool)).any()


def test_body_mask_largest_component_filled():
    sl = np.zeros((9, 12))
    sl[1:8, 1:8] = 60          # body: 7 x 7 block with a hole
    sl[4, 4] = 10
    sl[1, 10] = 80             # a smaller blob, dropped
    sl[2, 9:11] = 70
    expected = np.zeros((9, 12), bool)
    expected[1:8, 1:8] = True
    np.testing.assert_array_equal(body_mask(sl, 50.0001), expected)
    # 8-connectivity: a diagonal neighbour joins the component
    sl2 = np.zeros((5, 5))
    sl2[0:2, 0:2] = 60
    sl2[2, 2] = 60
    sl2[3:5, 3:5] = 60
    assert body_mask(sl2, 50).sum() == 9
    assert not body_mask(np.full((4, 4), 50.0), 50.0001).any()      # strictly above


def test_class_slices_rule_by_hand():
    lab = np.zeros((4, 3, 3), np.int16)
    lab[1, 0, 0] = 2                      # sum 2
    lab[2, 0, :] = 1                      # sum 3 + 4 = 7
    lab[2, 1, 0] = 4
    lab[3] = 0                            # empty: not even the background is listed
    out1 = class_slices(lab, 5, 1)
    assert out1 == [[1, 2], [2], [1], [], [2]]
    out3 = class_slices(lab, 5, 3)        # the threshold is on the sum of values, not a count
    assert out3 == [[2], [2], [], [], [2]]


def test_classmap_file_layout(tmp_path):
    card = load_card("CHAOST2")
    import SimpleITK as sitk
    for sid, organ in ((3, 1), (12, 4)):
        lab = np.zeros((3, 4, 4), np.float64)
        lab[1, 1, 1] = organ
        img = sitk.GetImageFromArray(lab)
        sitk.WriteImage(img, str(tmp_path / f"label_{sid}.nii.gz"))
        sitk.WriteImage(img, str(tmp_path / f"image_{sid}.nii.gz"))
    written, skipped, _ = write_class_index("CHAOST2", tmp_path, (1, 100), progress=False)
    assert (written, skipped) == (2, 0)
    cm = json.loads((tmp_path / "classmap_1.json").read_text(encoding="utf-8"))
    assert list(cm) == list(card.labels)
    assert cm["BG"] == {"3": [1], "12": [1]} and cm["LIVER"] == {"3": [1], "12": []}
    assert cm["SPLEEN"] == {"3": [], "12": [1]}
    cm100 = json.loads((tmp_path / "classmap_100.json").read_text(encoding="utf-8"))
    assert all(v == {"3": [], "12": []} for v in cm100.values())
    assert write_class_index("CHAOST2", tmp_path, (1, 100), progress=False)[:2] == (0, 2)


@requires_real_data
def test_classmap_1_equals_published(real_data_dir):
    card = load_card("CHAOST2")
    ours = build_classmaps(card, real_data_dir, [1], progress=False)[1]
    published = json.loads((real_data_dir / "classmap_1.json").read_text(encoding="utf-8"))
    assert ours == published


@requires_real_data
def test_superpixels_and_fgmask_match_published(real_data_dir, tmp_path):
    card = load_card("CHAOST2")
    for sid in REAL_SUBSET:
        name = card.file("image", id=sid)
        (tmp_path / name).symlink_to(real_data_dir / name)
    summary = make_pseudolabels("CHAOST2", tmp_path, "MIDDLE", jobs=2, progress=False)
    assert summary.written == len(REAL_SUBSET) and set(summary.scan_seconds) == set(REAL_SUBSET)
    for sid in REAL_SUBSET:
        ours, geo = read_zyx(tmp_path / card.file("fgmask", id=sid))
        theirs, geo_pub = read_zyx(real_data_dir / card.file("fgmask", id=sid))
        np.testing.assert_array_equal(ours, theirs)
        assert geo.GetOrigin() == geo_pub.GetOrigin()
        sp, _ = read_zyx(tmp_path / card.file("superpix", id=sid, scale="MIDDLE"))
        sp_pub, _ = read_zyx(real_data_dir / card.file("superpix", id=sid, scale="MIDDLE"))
        body = theirs > 0
        assert 0.3 < body.mean() < 0.9                            # a body, not the whole volume
        agreement = float(np.mean(sp[body] == sp_pub[body]))
        assert agreement >= MIN_AGREEMENT_IN_BODY, f"scan {sid}: {agreement:.4%} inside the body"
        assert np.array_equal(sp[~body], sp_pub[~body]) and not sp[~body].any()
    again = make_pseudolabels("CHAOST2", tmp_path, "MIDDLE", jobs=2, progress=False)
    assert (again.written, again.skipped) == (0, len(REAL_SUBSET))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parallel_pool_takes_the_largest_scans_first(tmp_path):
    """The pool's order: image files by decreasing size (ties keep the scan order)."""
    from data.pseudolabels import largest_first

    card = load_card("CHAOST2")
    for sid, nbytes in ((1, 10), (2, 300), (3, 20), (5, 300), (8, 5)):
        (tmp_path / card.file("image", id=sid)).write_bytes(b"x" * nbytes)
    assert largest_first(card, tmp_path, [1, 2, 3, 5, 8]) == [2, 5, 3, 1, 8]
