"""Bad input to the data commands: a clear error naming the file and what is wrong, and nothing
written (no output, no temporary file)."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from data import chaos_mr, class_index, cmr_c0, pseudolabels, synapse_ct
from data.cards import load_card
from data.synthetic import write_synthetic


@pytest.fixture(scope="module")
def chaos_raw_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos_raw")
    write_synthetic("chaos", root, 1, seed=21, size=256)
    return root


@pytest.fixture
def chaos_raw(chaos_raw_master, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(chaos_raw_master, raw)
    return raw


def _case(raw):
    return raw / "MR" / "1" / "T2SPIR"


def _nothing_written(out):
    assert not out.exists() or not any(out.iterdir()), f"{out} holds {list(out.iterdir())}"


def _convert_fails(raw, out, exc, match):
    with pytest.raises(exc, match=match):
        chaos_mr.convert(raw, out, progress=False)
    _nothing_written(out)


@pytest.mark.parametrize("folder", ["DICOM_anon", "Ground"])
def test_missing_folder(chaos_raw, tmp_path, folder):
    shutil.rmtree(_case(chaos_raw) / folder)
    _convert_fails(chaos_raw, tmp_path / "out", FileNotFoundError, rf"T2SPIR/{folder}: folder missing")


def test_png_without_dicom_and_dicom_without_png(chaos_raw, tmp_path):
    (_case(chaos_raw) / "DICOM_anon" / "IMG-0001-00003.dcm").unlink()
    (_case(chaos_raw) / "Ground" / "IMG-0001-00007.png").unlink()
    with pytest.raises(ValueError) as err:
        chaos_mr.convert(chaos_raw, tmp_path / "out", progress=False)
    msg = str(err.value)       # both problems in one error
    assert "PNG(s) without a DICOM file of the same stem" in msg and "IMG-0001-00003" in msg
    assert "DICOM file(s) without a PNG of the same stem" in msg and "IMG-0001-00007" in msg
    _nothing_written(tmp_path / "out")


def test_corrupt_dicom(chaos_raw, tmp_path):
    (_case(chaos_raw) / "DICOM_anon" / "IMG-0001-00004.dcm").write_bytes(b"not a dicom file" * 20)
    _convert_fails(chaos_raw, tmp_path / "out", ValueError,
                   r"IMG-0001-00004\.dcm: not a readable image")


def test_unknown_grey_value(chaos_raw, tmp_path):
    png = _case(chaos_raw) / "Ground" / "IMG-0001-00010.png"
    arr = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    arr[5, 5] = 100
    cv2.imwrite(str(png), arr)
    _convert_fails(chaos_raw, tmp_path / "out", ValueError,
                   r"IMG-0001-00010\.png: unexpected grey value\(s\) \[100\]")


def test_png_of_other_shape(chaos_raw, tmp_path):
    png = _case(chaos_raw) / "Ground" / "IMG-0001-00002.png"
    cv2.imwrite(str(png), np.zeros((200, 256), np.uint8))
    _convert_fails(chaos_raw, tmp_path / "out", ValueError,
                   r"IMG-0001-00002\.png: label of 200 x 256 pixels .* differs from its DICOM "
                   r"file .*IMG-0001-00002\.dcm \(256 x 256\)")


@pytest.fixture(scope="module")
def synapse_raw_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("synapse_raw")
    write_synthetic("synapse", root, 0, seed=3, ids=[1, 2], size=128)
    return root


@pytest.fixture
def synapse_raw(synapse_raw_master, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(synapse_raw_master, raw)
    return raw


def test_corrupt_nifti(synapse_raw, tmp_path):
    (synapse_raw / "img" / "img0002.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match=r"img0002\.nii\.gz: not a readable image"):
        synapse_ct.convert(synapse_raw, tmp_path / "out", progress=False)
    _nothing_written(tmp_path / "out")


def test_nifti_label_of_other_shape(synapse_raw, tmp_path):
    lab = sitk.ReadImage(str(synapse_raw / "label" / "label0001.nii.gz"))
    sitk.WriteImage(lab[:, :100, :], str(synapse_raw / "label" / "label0001.nii.gz"))
    with pytest.raises(ValueError, match=r"label0001\.nii\.gz: label size \(128, 100, \d+\) .* "
                                         r"differs from image .*img0001\.nii\.gz"):
        synapse_ct.convert(synapse_raw, tmp_path / "out", progress=False)
    _nothing_written(tmp_path / "out")


def test_image_without_label(synapse_raw, tmp_path):
    (synapse_raw / "label" / "label0002.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"img0002\.nii\.gz: no label0002\.nii\.gz"):
        synapse_ct.convert(synapse_raw, tmp_path / "out", progress=False)
    _nothing_written(tmp_path / "out")


def test_c0_unknown_label_value(tmp_path):
    write_synthetic("c0", tmp_path / "raw", 1, seed=0, size=64)
    path = tmp_path / "raw" / "patient1_C0_manual.nii.gz"
    lab = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(lab)
    arr[0, 0, 0] = 1220
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(lab)
    sitk.WriteImage(bad, str(path))
    with pytest.raises(ValueError, match=r"patient1_C0_manual\.nii\.gz: unexpected label value\(s\) \[1220\]"):
        cmr_c0.convert(tmp_path / "raw", tmp_path / "out", progress=False)
    _nothing_written(tmp_path / "out")


def test_pseudolabels_on_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no scan matching 'image_\{id\}\.nii\.gz' in .*empty"):
        pseudolabels.make_pseudolabels("CHAOST2", tmp_path / "empty", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pseudolabels.main(["--dataset", "CHAOST2", "--data-dir", str(tmp_path / "nowhere")])
    _nothing_written(tmp_path / "empty")


def test_unknown_dataset_and_scale(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'NOPE'.*known cards: .*C0.*CHAOST2.*SABS"):
        class_index.main(["--dataset", "NOPE", "--data-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"scale 'HUGE' is not in dataset card .*scales: MIDDLE"):
        pseudolabels.make_pseudolabels("CHAOST2", tmp_path, "HUGE", progress=False)


def test_card_with_missing_key(tmp_path, monkeypatch):
    (tmp_path / "BROKEN.json5").write_text('{name: "BROKEN", modality: "MR", labels: ["BG", "A"]}', encoding="utf-8")
    monkeypatch.setenv("SSL_ALPNET_CARDS", str(tmp_path))
    with pytest.raises(ValueError, match=r"BROKEN\.json5: missing key\(s\) label_groups"):
        load_card("BROKEN")
    with pytest.raises(ValueError, match=r"missing key"):
        class_index.write_class_index("BROKEN", tmp_path)


def test_interrupted_conversion_leaves_complete_cases_and_restarts(tmp_path, monkeypatch):
    write_synthetic("c0", tmp_path / "raw", 3, seed=1, size=64)
    import data.convert as convert_mod

    real = convert_mod.atomic_write_sitk
    calls = {"n": 0}

    def dying_write(image, target, **kw):
        calls["n"] += 1
        if calls["n"] == 4:                 # case 2's image (label, then image, per case)
            raise KeyboardInterrupt
        return real(image, target, **kw)

    monkeypatch.setattr(convert_mod, "atomic_write_sitk", dying_write)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        cmr_c0.convert(tmp_path / "raw", out, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["image_1.nii.gz", "label_1.nii.gz", "label_2.nii.gz", "record_1.json",
                     "record_2.json"]               # no temporary, case 2 unfinished (no image)
    monkeypatch.setattr(convert_mod, "atomic_write_sitk", real)
    summary = cmr_c0.convert(tmp_path / "raw", out, progress=False)
    assert (summary.written, summary.skipped) == (2, 1)


def test_second_series_in_folder(chaos_raw, tmp_path):
    case = _case(chaos_raw)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(case / "DICOM_anon" / "IMG-0001-00001.dcm"))
    reader.LoadPrivateTagsOn()
    sl = reader.Execute()
    for key in reader.GetMetaDataKeys():
        sl.SetMetaData(key, reader.GetMetaData(key))
    sl.SetMetaData("0020|000e", "1.2.3.999")
    sl.SetMetaData("0008|0018", "1.2.3.999.1")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(case / "DICOM_anon" / "IMG-0002-00001.dcm"))
    writer.Execute(sl)
    shutil.copy(case / "Ground" / "IMG-0001-00001.png", case / "Ground" / "IMG-0002-00001.png")
    _convert_fails(chaos_raw, tmp_path / "out", ValueError, r"DICOM_anon: expected one DICOM series, found 2")
