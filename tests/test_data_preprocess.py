"""data.preprocess / data.geometry: SPEC §2 steps on hand-computed volumes, and the round trip
back to the raw grid against the synthetic generator's truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from data.cards import load_card
from data.geometry import read_record, restore_to_raw
from data.preprocess import Recipe, preprocess_ct, preprocess_image, preprocess_mr, preprocess_scan
from data.synthetic import write_synthetic

CHAOS = load_card("CHAOST2")
SABS = load_card("SABS")
KEEP = Recipe("mr", clip_percentile=None, spacing=(None, None, None), size_xy=None)


def _img(arr_zyx, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_mr_clip_is_truncated_percentile():
    arr = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)     # 99.5th percentile 994.005
    out, _, rec = preprocess_mr(_img(arr), None, CHAOS, Recipe("mr", spacing=(None, None, None),
                                                                size_xy=None))
    got = sitk.GetArrayFromImage(out)
    assert rec["steps"]["clip"] == 994
    assert got.max() == 994 and got[0, 0, 0] == 0
    np.testing.assert_array_equal(got, np.minimum(arr, 994))


def test_mr_sizes_follow_reference_formula():
    arr = np.zeros((20, 64, 100), np.int16)
    arr[5:15, 10:50, 20:80] = 300
    out, lab, rec = preprocess_mr(_img(arr, (1.0, 1.5, 5.0)), _img(arr // 300), CHAOS)
    # x: int(100 * 1.0 / 1.25 + 1) = 81, y: int(64 * 1.5 / 1.25 + 1) = 77, z: int(20 * 5 / 7.7 + 1) = 13
    assert rec["steps"]["resampled"]["size"] == [81, 77, 13]
    assert out.GetSize() == (256, 256, 13) and lab.GetSize() == (256, 256, 13)
    assert out.GetSpacing() == pytest.approx((1.25, 1.25, 7.7))


def test_mr_crop_and_pad_window_and_origin():
    rng = np.random.default_rng(0)
    arr = rng.integers(10, 500, size=(3, 200, 300)).astype(np.float32)   # y padded, x cropped
    recipe = Recipe("mr", clip_percentile=None, spacing=(None, None, None), size_xy=(256, 256))
    out, _, rec = preprocess_mr(_img(arr, (2.0, 3.0, 4.0), (10.0, 20.0, 30.0)), None, CHAOS, recipe)
    got = sitk.GetArrayFromImage(out)
    # x: c = 150, window [22, 278); y: c = 100, window [-28, 228) padded with the volume minimum
    assert rec["steps"]["crop_start_xy"] == [22, -28]
    np.testing.assert_array_equal(got[:, 28:228, :], arr[:, :, 22:278])
    assert np.all(got[:, :28] == arr.min()) and np.all(got[:, 228:] == arr.min())
    assert out.GetOrigin() == pytest.approx((10.0 + 22 * 2.0, 20.0 - 28 * 3.0, 30.0))
    # the same physical point holds the same value before and after
    assert got[1, 50, 7] == arr[1, 50 - 28, 7 + 22]


def test_labels_class_by_class_rint_half_to_even():
    # one row of labels, resampled from spacing 1 to 0.5: 11 samples at x = 0, 0.5, ..., 5
    row = np.array([0, 1, 1, 2, 2], np.uint8)
    lab = _img(row.reshape(1, 1, 5))
    recipe = Recipe("mr", clip_percentile=None, spacing=(0.5, None, None), size_xy=None)
    _, out, _ = preprocess_mr(_img(row.reshape(1, 1, 5).astype(np.float32)), lab, CHAOS, recipe)
    got = sitk.GetArrayFromImage(out).ravel()
    # class 1 interpolates to [0, .5, 1, 1, 1, .5, 0, ...]: rint(.5) = 0, so x = 0.5 and 2.5
    # stay background (class 2 is also .5 at 2.5); the last sample lies outside the input
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 1, 0, 2, 2, 2, 0, 0])


def test_reorientation_flips_rows_and_keeps_physical_points():
    arr = np.arange(2 * 4 * 6, dtype=np.int16).reshape(2, 4, 6)
    img = _img(arr, (1.0, 2.0, 3.0), (5.0, 6.0, 7.0))
    out, _, _ = preprocess_mr(img, None, CHAOS, Recipe("mr", orientation="LAS", clip_percentile=None,
                                                        spacing=(None, None, None), size_xy=None))
    assert out.GetDirection() == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, 1))
    got = sitk.GetArrayFromImage(out)
    np.testing.assert_array_equal(got, arr[:, ::-1, :])
    assert out.TransformIndexToPhysicalPoint((2, 0, 1)) == pytest.approx(
        img.TransformIndexToPhysicalPoint((2, 3, 1)))


def test_ct_window_rescale_cut_and_sizes():
    arr = np.full((4, 100, 100), -1000, np.int16)
    arr[:, 40:60, 40:60] = 75        # (75 + 125) / 400 * 255 = 127.5
    arr[:, 45:50, 45:50] = 900       # above the window: 255
    recipe = Recipe("ct", size_xy=None, roi_cut=10, inplane_factor=2.0)
    lab = _img((arr == 75).astype(np.uint8))
    out, lab_out, rec = preprocess_ct(_img(arr, (0.8, 0.8, 5.0)), lab, SABS, recipe)
    # cut 10 -> 80 voxels; x, y: int(80 * 0.8 / 1.6 + 1) = 41; z: int(4 * 5 / 5 + 1) = 5
    assert out.GetSize() == (41, 41, 5)
    assert out.GetSpacing() == pytest.approx((1.6, 1.6, 5.0))
    assert out.GetOrigin() == pytest.approx((8.0, 8.0, 0.0))
    got = sitk.GetArrayFromImage(out)
    assert got[0, 0, 0] == 0.0 and got[-1].max() == 0.0        # the Z + 1-th slice is ITK's fill
    # voxel (x, y) = (20, 20) of the output sits at input index 10 + 2 * 20 = 50 -> 127.5
    assert got[1, 20, 20] == pytest.approx(127.5)
    assert got.max() == pytest.approx(255.0)
    assert sitk.GetArrayFromImage(lab_out)[1, 20, 20] == 1


def test_sabs_card_recipe_gives_257_planes():
    arr = np.full((3, 512, 512), -200, np.int16)
    arr[:, 200:300, 200:300] = 100
    out, _, _ = preprocess_scan(_img(arr, (0.7, 0.7, 3.0)), None, SABS)
    # int(448 * 0.7 / (0.7 * 1.75) + 1) = 257 in-plane; z: 3 + 1
    assert out.GetSize() == (257, 257, 4)


@pytest.mark.parametrize("numbering", ["ascending", "descending"])
def test_round_trip_to_raw_against_truth(tmp_path, numbering):
    case, = write_synthetic("chaos", tmp_path, 1, seed=3, numbering=numbering)
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(case.image_path))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    image = reader.Execute()
    out, lab, record = preprocess_scan(image, case.truth, CHAOS)
    assert out.GetSize()[:2] == (256, 256)
    assert out.GetDirection()[4] < -0.9                   # rows flipped like the published files
    back = restore_to_raw(sitk.GetArrayFromImage(lab), record)
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    got, truth = sitk.GetArrayFromImage(back), case.truth_zyx
    for organ in (1, 2, 3, 4):
        assert _dice(got == organ, truth == organ) > 0.97
    # the row flip matters: undone wrongly, the liver would not overlap
    assert _dice(got[:, ::-1] == 1, truth == 1) < 0.8


def test_restore_accepts_cut_planes_and_rejects_bad_masks(tmp_path):
    arr = np.zeros((3, 512, 512), np.int16) - 300
    arr[:, 150:350, 150:350] = 80
    out, record = preprocess_image(_img(arr, (0.7, 0.7, 3.0)), SABS)
    mask = (sitk.GetArrayFromImage(out)[:, :256, :256] > 100).astype(np.uint8)
    back = sitk.GetArrayFromImage(restore_to_raw(mask, record))
    truth = arr == 80
    assert _dice(back == 1, truth) > 0.97
    with pytest.raises(ValueError, match="does not fit"):
        restore_to_raw(np.zeros((2, 256, 256), np.uint8), record)
    with pytest.raises(ValueError, match="lacks 'raw'"):
        restore_to_raw(mask, {"output": record["output"]})
    (tmp_path / "record_0.json").write_text(json.dumps(record), encoding="utf-8")
    assert read_record(tmp_path / "record_0.json") == record
    (tmp_path / "record_1.json").write_text(json.dumps({"raw": record["raw"]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"record_1\.json: preprocessing record lacks \['output'\]"):
        read_record(tmp_path / "record_1.json")
    with pytest.raises(FileNotFoundError, match="record_2.json"):
        read_record(tmp_path / "record_2.json")


def test_label_values_outside_the_card_are_rejected():
    arr = np.zeros((2, 8, 8), np.int16)
    with pytest.raises(ValueError, match=r"label values \[7\]"):
        preprocess_mr(_img(arr), _img(np.full((2, 8, 8), 7, np.uint8)), CHAOS, KEEP)
