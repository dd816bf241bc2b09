"""Truncated or corrupt image files are refused where they are read (``util.io.read_image``), and
the data commands stop before writing anything: SimpleITK alone reads a ``.nii.gz`` cut in half
as data, zero-filling the missing part.

Synthetic files run everywhere; the real-scan tests cut a copy of a real CHAOS scan in half.
"""
from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from data.cards import load_card
from data.class_index import write_class_index
from data.prepare import prepare
from data.pseudolabels import make_pseudolabels
from dataloaders.scans import load_scan
from tests.conftest import requires_real_data
from tests.tinydata import build_tiny_dataset
from util.io import CorruptImageError, read_image, read_zyx, verify_image_file

ROOT = Path(__file__).resolve().parents[1]
REAL_IDS = (1, 2)            # two real CHAOS scans copied for the real-data tests
WRITTEN_KINDS = ("superpix-*", "fgmask_*", "classmap_*", ".*tmp*")   # what the commands would write


def cut_in_half(path: Path) -> Path:
    """Keep the first half of the file's bytes (a copy interrupted half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def written(folder: Path) -> list[str]:
    return sorted(p.name for kind in WRITTEN_KINDS for p in folder.glob(kind))


def noise_volume(path: Path, shape_zyx=(6, 40, 40), seed: int = 0) -> np.ndarray:
    """A float32 volume of noise (hard to compress, so half the bytes is half the voxels)."""
    arr = np.random.default_rng(seed).normal(size=shape_zyx).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), path.name.endswith(".gz"))
    return arr


# ---- the reader, on synthetic files ---------------------------------------------------------

@pytest.mark.parametrize("name", ["vol.nii.gz", "vol.nii"], ids=["gzip", "uncompressed"])
def test_intact_file_reads_as_simpleitk_does(tmp_path, name):
    arr = noise_volume(tmp_path / name)
    got, img = read_zyx(tmp_path / name)
    assert got.dtype == np.float32 and np.array_equal(got, arr) and img.GetSize() == (40, 40, 6)


@pytest.mark.parametrize("name", ["vol.nii.gz", "vol.nii"], ids=["gzip", "uncompressed"])
def test_half_file_is_refused_naming_it(tmp_path, name):
    path = tmp_path / name
    noise_volume(path)
    cut_in_half(path)
    # what the check is for: SimpleITK reads the cut file without complaint, zeros in place of data
    zeros = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) == 0
    assert zeros.mean() > 0.3
    with pytest.raises(CorruptImageError, match=f"{path}: corrupt or truncated image file"):
        read_image(path)
    with pytest.raises(ValueError, match=str(path)):     # a ValueError for callers that catch those
        read_zyx(path)


def test_complete_gzip_of_too_few_voxels_is_refused(tmp_path):
    """A whole, valid gzip stream (its CRC and length check out) of a NIfTI that lost half its
    voxels before it was compressed: only the size check against the header catches it."""
    raw = tmp_path / "vol.nii"
    noise_volume(raw)
    cut_in_half(raw)
    path = tmp_path / "vol.nii.gz"
    path.write_bytes(gzip.compress(raw.read_bytes()))
    assert gzip.decompress(path.read_bytes()) == raw.read_bytes()      # the stream itself is sound
    with pytest.raises(CorruptImageError, match=r"vol\.nii\.gz: corrupt or truncated image file.*"
                                                r"after decompression"):
        read_image(path)


def test_flipped_byte_fails_the_crc(tmp_path):
    path = tmp_path / "vol.nii.gz"
    noise_volume(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptImageError, match=r"vol\.nii\.gz.*(CRC|corrupt)"):
        verify_image_file(path)


def test_not_gzip_and_missing(tmp_path):
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="fake.nii.gz: not a readable image"):   # not "truncated"
        read_image(fake)
    with pytest.raises(FileNotFoundError, match="nope.nii.gz: no such file"):
        read_image(tmp_path / "nope.nii.gz")


def test_rewritten_file_is_checked_again(tmp_path):
    """The per-process memory of checked files keys on size/mtime/inode: a file cut after a good
    read is refused on the next one."""
    path = tmp_path / "vol.nii.gz"
    noise_volume(path)
    read_image(path)
    cut_in_half(path)
    with pytest.raises(CorruptImageError):
        read_image(path)


# ---- the data commands and the loader, on a tiny synthetic dataset ----------------------------

@pytest.fixture
def tiny_inputs(tmp_path):
    """A tiny CHAOST2 folder holding only images and labels (what conversion leaves)."""
    tiny = build_tiny_dataset(tmp_path / "chaos", "CHAOST2", hw=32, depth=3, block=8)
    for kind in WRITTEN_KINDS:
        for p in tiny.data_dir.glob(kind):
            p.unlink()
    return tiny


def test_pseudolabels_stop_before_writing(tiny_inputs):
    bad = cut_in_half(tiny_inputs.data_dir / f"image_{tiny_inputs.scan_ids[-1]}.nii.gz")
    with pytest.raises(CorruptImageError, match=str(bad)):
        make_pseudolabels("CHAOST2", tiny_inputs.data_dir, jobs=1, progress=False)
    assert written(tiny_inputs.data_dir) == []


def test_class_index_stops_before_writing(tiny_inputs):
    bad = cut_in_half(tiny_inputs.data_dir / f"label_{tiny_inputs.scan_ids[0]}.nii.gz")
    with pytest.raises(CorruptImageError, match=str(bad)):
        write_class_index("CHAOST2", tiny_inputs.data_dir, progress=False)
    assert written(tiny_inputs.data_dir) == []


def test_prepare_names_every_bad_file_before_writing(tiny_inputs):
    d = tiny_inputs.data_dir
    bad_image = cut_in_half(d / f"image_{tiny_inputs.scan_ids[-1]}.nii.gz")
    bad_label = cut_in_half(d / f"label_{tiny_inputs.scan_ids[0]}.nii.gz")
    with pytest.raises(CorruptImageError, match="2 unusable input file") as err:
        prepare("CHAOST2", None, d, jobs=1, progress=False)
    assert str(bad_image) in str(err.value) and str(bad_label) in str(err.value)
    assert written(d) == []


def test_loader_refuses_a_cut_companion(tiny_inputs):
    card = load_card("CHAOST2")
    sid = tiny_inputs.scan_ids[0]
    bad = cut_in_half(tiny_inputs.data_dir / f"label_{sid}.nii.gz")
    with pytest.raises(CorruptImageError, match=str(bad)):
        load_scan(card, tiny_inputs.data_dir, sid, label=True)


# ---- a real scan cut in half ----------------------------------------------------------------

@pytest.fixture
def real_copy(real_data_dir, tmp_path):
    """Images and labels of two real scans, the image of the second cut to half its bytes."""
    out = tmp_path / "chaos"
    out.mkdir()
    for sid in REAL_IDS:
        for kind in ("image", "label"):
            shutil.copyfile(real_data_dir / f"{kind}_{sid}.nii.gz", out / f"{kind}_{sid}.nii.gz")
    return out, cut_in_half(out / f"image_{REAL_IDS[1]}.nii.gz")


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, encoding="utf-8", timeout=300)


@requires_real_data
def test_real_scan_cut_in_half_stops_prepare(real_copy):
    out, bad = real_copy
    res = run_cli("data.prepare", "--dataset", "CHAOST2", "--out", str(out), "--jobs", "1",
                  "--no-progress")
    assert res.returncode != 0
    assert f"{bad}: corrupt or truncated image file" in res.stderr
    assert written(out) == []


@requires_real_data
def test_real_scan_cut_in_half_stops_pseudolabels_and_loader(real_copy):
    out, bad = real_copy
    res = run_cli("data.pseudolabels", "--dataset", "CHAOST2", "--data-dir", str(out), "--jobs", "1",
                  "--no-progress")
    assert res.returncode != 0 and str(bad) in res.stderr
    assert written(out) == []
    with pytest.raises(CorruptImageError, match=str(bad)):
        load_scan(load_card("CHAOST2"), out, REAL_IDS[1])


@requires_real_data
def test_real_label_cut_in_half_stops_class_index(real_copy):
    out, _ = real_copy
    bad = cut_in_half(out / f"label_{REAL_IDS[0]}.nii.gz")
    res = run_cli("data.class_index", "--dataset", "CHAOST2", "--data-dir", str(out), "--no-progress")
    assert res.returncode != 0 and f"{bad}: corrupt or truncated image file" in res.stderr
    assert written(out) == []
