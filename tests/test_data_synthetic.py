"""data.synthetic: raw layouts, determinism, geometry and truth consistency."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from data import synthetic
from data.synthetic import C0_VALUES, CHAOS_GREY, write_synthetic


def _read_series(folder):
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    return names, reader.Execute()


@pytest.mark.parametrize("numbering", ["ascending", "descending"])
def test_chaos_layout_numbering_and_truth(tmp_path, numbering):
    case, = write_synthetic("chaos", tmp_path, 1, seed=4, numbering=numbering, size=256)
    dicom_dir = tmp_path / "MR" / "1" / "T2SPIR" / "DICOM_anon"
    ground = tmp_path / "MR" / "1" / "T2SPIR" / "Ground"
    n_z = case.truth.GetSize()[2]
    assert 20 <= n_z <= 40
    assert sorted(p.stem for p in dicom_dir.glob("*.dcm")) == sorted(p.stem for p in ground.glob("*.png"))
    names, vol = _read_series(dicom_dir)
    numbers = [int(n.rsplit("-", 1)[1].split(".")[0]) for n in names]   # in slice-position order
    expected = list(range(1, n_z + 1)) if numbering == "ascending" else list(range(n_z, 0, -1))
    assert numbers == expected
    # the series reader's grid is the truth's grid
    assert vol.GetSize() == case.truth.GetSize()
    np.testing.assert_allclose(vol.GetOrigin(), case.truth.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(vol.GetSpacing(), case.truth.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.GetDirection(), case.truth.GetDirection(), atol=1e-6)
    # each PNG holds the truth of the slice its DICOM stem sits on, in CHAOS grey values
    truth = case.truth_zyx
    lut = np.zeros(256, np.uint8)
    for lab, grey in CHAOS_GREY.items():
        lut[grey] = lab
    for z, name in enumerate(names):
        png = cv2.imread(str(ground / (name.rsplit("/", 1)[1][:-4] + ".png")), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(png)) <= {0, *CHAOS_GREY.values()}
        np.testing.assert_array_equal(lut[png], truth[z])
    # every organ present, and brighter organs than air inside the body
    assert set(np.unique(truth)) == {0, 1, 2, 3, 4}
    img = sitk.GetArrayFromImage(vol)
    for lab in (1, 2, 3, 4):
        assert img[truth == lab].mean() > 150


def test_deterministic_in_seed_and_case(tmp_path):
    a = write_synthetic("chaos", tmp_path / "a", 2, seed=1, size=256)
    b = write_synthetic("chaos", tmp_path / "b", 0, seed=1, ids=[2], size=256)
    c = write_synthetic("chaos", tmp_path / "c", 1, seed=2, size=256)
    np.testing.assert_array_equal(a[1].truth_zyx, b[0].truth_zyx)
    va = sitk.GetArrayFromImage(_read_series(a[1].image_path)[1])
    vb = sitk.GetArrayFromImage(_read_series(b[0].image_path)[1])
    np.testing.assert_array_equal(va, vb)
    assert a[0].truth.GetSize() != c[0].truth.GetSize() or not np.array_equal(a[0].truth_zyx, c[0].truth_zyx)


def test_synapse_layout(tmp_path):
    case, = write_synthetic("synapse", tmp_path, 1, seed=0, size=256)
    img = sitk.ReadImage(str(tmp_path / "img" / "img0001.nii.gz"))
    lab = sitk.ReadImage(str(tmp_path / "label" / "label0001.nii.gz"))
    arr, labels = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
    assert arr.dtype == np.int16 and arr.min() < -900       # air in HU
    np.testing.assert_array_equal(labels, case.truth_zyx)
    for organ in (1, 2, 3, 6):                              # the tested organs are present
        assert (labels == organ).sum() > 500
    assert labels.max() <= 13
    assert abs(np.mean(arr[labels == 6]) - 62) < 15          # liver in soft-tissue HU


def test_c0_layout(tmp_path):
    case, = write_synthetic("c0", tmp_path, 1, seed=0)
    manual = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "patient1_C0_manual.nii.gz")))
    assert set(np.unique(manual)) == {0, 200, 500, 600}
    truth = case.truth_zyx
    for lab, value in C0_VALUES.items():
        np.testing.assert_array_equal(manual == value, truth == lab)
    img = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "patient1_C0.nii.gz")))
    assert img[truth == 1].mean() > 2 * img[truth == 2].mean()   # bright blood, dark myocardium
    direction = np.reshape(case.truth.GetDirection(), (3, 3))
    assert not np.allclose(np.abs(direction), np.eye(3), atol=0.05)  # oblique short axis


def test_rewrite_replaces_a_different_case(tmp_path):
    first, = write_synthetic("chaos", tmp_path, 1, seed=0, size=256)
    second, = write_synthetic("chaos", tmp_path, 1, seed=5, size=256)
    assert first.truth.GetSize()[2] != second.truth.GetSize()[2]
    names, vol = _read_series(second.image_path)
    assert len(names) == second.truth.GetSize()[2] == len(list(second.label_path.glob("*.png")))


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        write_synthetic("ct", tmp_path, 1)
    with pytest.raises(ValueError, match="numbering"):
        write_synthetic("chaos", tmp_path, 1, numbering="random")


def test_cli(tmp_path, capsys):
    assert synthetic.main(["c0", "--out", str(tmp_path), "--n", "2", "--seed", "5"]) == 0
    assert "2 case(s) written" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "patient1_C0.nii.gz", "patient1_C0_manual.nii.gz", "patient2_C0.nii.gz",
        "patient2_C0_manual.nii.gz"]
