"""segment.py end to end: equality with validation on a real CHAOS scan, the round trip through
the training geometry for a scan stored in another orientation and spacing, and bad input.

Network: the conformance fixture network (``tests/refnet.py``, tuned localconv), saved as a bare
state_dict as the original code saved checkpoints. The synthetic tests use a card whose training
geometry is 64 x 64 at 3 mm (so ResNet-101 runs on small slices).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from data.phantom import Blob, Grid, Tissue, grid_image, render, rotation
from tests.conftest import requires_real_data
from tests.refnet import REFERENCE, fixture_state_dict
from util.io import atomic_save_torch
from util.segment import SegmentRequest, build_segmenter, inspect_checkpoint, segment

REF_JSON = REFERENCE / "validation" / "chaos_fold0_kidneys.json"
FOLD0_QUERIES = (1, 2, 3, 5)          # rows of rawDice; columns [RK, LK] (labels 2, 3)
REAL_QUERY, REAL_ORGAN, REAL_SUPPORT = 3, 2, 8
ORGAN_SEMI_MM = (22.0, 18.0, 22.0)    # the phantom organ's semi-axes

# a card like C0's, but reoriented to LAS and resampled to 3 x 3 x 6 mm, 64 x 64 in-plane
TEST_CARD = """{
  name: "SEGTEST", modality: "MR", labels: ["BG", "ORGAN", "OTHER"], fold_separators: null,
  label_groups: { pa_all: [1], groups: [[]] }, normalisation: "per_volume_zscore",
  body_mask_threshold: 10.0001, superpixel: { MIDDLE: { scale: 1.0, sigma: 1.0, min_size: 400 } },
  files: { image: "image_{id}.nii.gz", label: "label_{id}.nii.gz",
           superpix: "superpix-{scale}_{id}.nii.gz", fgmask: "fgmask_{id}.nii.gz",
           classmap: "classmap_{min_tp}.json" },
  data_dir: "./unused/",
  preprocessing: { recipe: "mr", orientation: "LAS", clip_percentile: 99.5,
                   spacing: [3.0, 3.0, 6.0], size_xy: [64, 64] },
}"""


@pytest.fixture(scope="module")
def fixture_ckpt(tmp_path_factory) -> Path:
    return atomic_save_torch(fixture_state_dict(tuned_localconv=True),
                             tmp_path_factory.mktemp("ckpt") / "fixture_tuned.pth")


@pytest.fixture(scope="module")
def cards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cards")
    (folder / "SEGTEST.json5").write_text(TEST_CARD, encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def _test_card(cards, monkeypatch):
    monkeypatch.setenv("SSL_ALPNET_CARDS", str(cards))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict[str, Path]:
    """A body with one bright organ (label 1) on a tilted grid of anisotropic spacing, and the
    same scan stored with permuted and flipped axes (the query)."""
    folder = tmp_path_factory.mktemp("phantom")
    direction = rotation(0.3, -0.2, 0.4)
    size, spacing = (70, 60, 24), (2.2, 2.6, 4.5)
    origin = -direction @ (np.array(size) * np.array(spacing) / 2)
    grid = Grid(size, spacing, tuple(origin), direction)
    blobs = [Blob((0, 0, 0), (70, 60, 50), 1), Blob((25, -15, -20), ORGAN_SEMI_MM, 2, 1)]
    image, label = render(grid, blobs, [Tissue(0, 0), Tissue(100, 5), Tissue(400, 5)],
                          np.random.default_rng(0), noise_sd=5, rician=True)
    img, lab = grid_image(grid, image.astype(np.float32)), grid_image(grid, label)
    turn = lambda x: sitk.Flip(sitk.PermuteAxes(x, [1, 2, 0]), [True, False, False])  # noqa: E731
    paths = {k: folder / f"{k}.nii.gz" for k in ("image", "label", "query", "query_truth")}
    for key, value in (("image", img), ("label", lab), ("query", turn(img)), ("query_truth", turn(lab))):
        sitk.WriteImage(value, str(paths[key]))
    return paths


@pytest.fixture(scope="module")
def fixture_model(fixture_ckpt):
    return build_segmenter(inspect_checkpoint(fixture_ckpt), "cpu")


def _same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _centre_mm(img: sitk.Image, mask_zyx: np.ndarray) -> np.ndarray:
    """Physical centre of mass of a mask (mm)."""
    idx = np.argwhere(mask_zyx)[:, ::-1].mean(axis=0)            # (x, y, z) index
    return np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    return 2.0 * np.count_nonzero(p & t) / (np.count_nonzero(p) + np.count_nonzero(t))


@requires_real_data
@pytest.mark.realdata
def test_real_chaos_equals_validation(real_data_dir, fixture_ckpt, tmp_path):
    """--preprocessed with the ground-truth --z-range: the written mask's Dice on the counted
    slices is the per-scan Dice of the original code's validation (one scan, one organ)."""
    import segment as cli

    query = real_data_dir / f"image_{REAL_QUERY}.nii.gz"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(real_data_dir / f"label_{REAL_QUERY}.nii.gz")))
    zs = np.flatnonzero((truth == REAL_ORGAN).any(axis=(1, 2)))          # Z x H x W
    out = tmp_path / "out"
    rc = cli.main(["--checkpoint", str(fixture_ckpt), "--dataset", "CHAOST2", "--preprocessed",
                   "--support-image", str(real_data_dir / f"image_{REAL_SUPPORT}.nii.gz"),
                   "--support-label", str(real_data_dir / f"label_{REAL_SUPPORT}.nii.gz"),
                   "--label", str(REAL_ORGAN), "--query", str(query), "--out", str(out),
                   "--z-range", str(zs[0]), str(zs[-1]), "--device", "cpu", "--no-progress"])
    assert rc == 0
    written = sitk.ReadImage(str(out / f"image_{REAL_QUERY}_label{REAL_ORGAN}.nii.gz"))
    _same_grid(written, sitk.ReadImage(str(query)))
    mask = sitk.GetArrayFromImage(written)
    assert set(np.unique(mask).tolist()) <= {0, REAL_ORGAN}
    counted = slice(zs[0], zs[-1] + 1)
    raw_dice = json.loads(REF_JSON.read_text(encoding="utf-8"))["metrics"]["mar_val_batches_rawDice"]
    expected = raw_dice[FOLD0_QUERIES.index(REAL_QUERY)][REAL_ORGAN - 2]
    assert _dice(mask[counted], truth[counted] == REAL_ORGAN) == pytest.approx(expected, abs=1e-3)
    rows = list(csv.DictReader((out / f"volumes_label{REAL_ORGAN}.csv").open()))
    voxels = int(np.count_nonzero(mask))
    assert len(rows) == 1 and int(rows[0]["voxels"]) == voxels
    # 1.25 x 1.25 x 7.7 mm voxels, in mL
    assert float(rows[0]["volume_ml"]) == pytest.approx(voxels * 1.25 * 1.25 * 7.7 / 1000, rel=1e-5)
    assert (out / f"image_{REAL_QUERY}_label{REAL_ORGAN}.png").is_file()


def test_round_trip_other_orientation(phantom, fixture_ckpt, fixture_model, tmp_path):
    """Support and query are the same scan: the mask lies on the organ, in the query's own grid;
    the same scan stored with permuted, flipped axes gives the same mask, permuted and flipped."""
    truth = sitk.ReadImage(str(phantom["label"]))
    zs = np.flatnonzero(sitk.GetArrayFromImage(truth).any(axis=(1, 2)))
    base = dict(checkpoint=fixture_ckpt, support_image=phantom["image"],
                support_label=phantom["label"], label=1, dataset="SEGTEST")
    same = segment(SegmentRequest(**base, queries=(phantom["image"],), out=tmp_path / "a",
                                  z_range=(int(zs[0]), int(zs[-1]))), model=fixture_model, progress=False)
    written = sitk.ReadImage(str(same.results[0].mask))
    _same_grid(written, truth)
    mask, gt = sitk.GetArrayFromImage(written) > 0, sitk.GetArrayFromImage(truth) > 0
    # the fixture network over-segments (about 2.5 x the organ here), so what is checked is
    # where the mask lies: it covers most of the organ, its centre lies inside the organ
    # (closer than the smallest semi-axis, 18 mm), and mirrored masks overlap far less
    assert np.count_nonzero(mask & gt) / np.count_nonzero(gt) >= 0.7
    assert np.linalg.norm(_centre_mm(written, mask) - _centre_mm(truth, gt)) < ORGAN_SEMI_MM[1]
    dice = _dice(mask, gt)
    for axis in range(3):   # a wrong orientation would put the mask beside the organ
        assert _dice(np.flip(mask, axis), gt) < dice / 2, axis

    free = segment(SegmentRequest(**base, queries=(phantom["image"],), out=tmp_path / "b"),
                   model=fixture_model, progress=False)
    turned = segment(SegmentRequest(**base, queries=(phantom["query"],), out=tmp_path / "c"),
                     model=fixture_model, progress=False)
    q_written = sitk.ReadImage(str(turned.results[0].mask))
    _same_grid(q_written, sitk.ReadImage(str(phantom["query"])))
    expect = sitk.Flip(sitk.PermuteAxes(sitk.ReadImage(str(free.results[0].mask)), [1, 2, 0]),
                       [True, False, False])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(q_written), sitk.GetArrayFromImage(expect))
    assert turned.results[0].volume_ml == pytest.approx(free.results[0].volume_ml)
    assert turned.results[0].how.startswith("label-free align: ")
    # the default rule scores the support's own slices once more (its calibration)
    n_sup = free.results[0].training_slices               # support and query: the same scan
    assert (turned.support_encoded, turned.query_encoded) == (3 + n_sup, turned.results[0].training_slices)


def _bad(tmp_path: Path, phantom: dict[str, Path], ckpt: Path) -> dict:
    return dict(checkpoint=ckpt, support_image=phantom["image"], support_label=phantom["label"],
                label=1, queries=(phantom["query"],), out=tmp_path / "out", dataset="SEGTEST")


@pytest.fixture(scope="module")
def broken(tmp_path_factory, phantom) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    text = folder / "notes.nii.gz"
    text.write_text("not an image\n", encoding="utf-8")
    shifted = sitk.ReadImage(str(phantom["label"]))
    shifted.SetSpacing((2.2, 2.6, 5.0))
    sitk.WriteImage(shifted, str(folder / "label_other_spacing.nii.gz"))
    other = folder / "classifier.pth"
    torch.save({"fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2)}, other)
    cut = folder / "query_cut.nii.gz"                   # a copy interrupted half-way
    data = Path(phantom["query"]).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return {"text": text, "shifted": folder / "label_other_spacing.nii.gz", "other": other, "cut": cut}


@pytest.mark.parametrize("change, error, match", [
    ({"label": 3}, ValueError, r"label value 3 does not occur in the support label \(values present: 0, 1\)"),
    ({"support_label": "shifted"}, ValueError, r"support image and label differ in geometry.*spacing"),
    ({"queries": ("text",)}, ValueError, r"query .*notes.nii.gz: not a readable image"),
    ({"checkpoint": "other"}, ValueError, r"classifier.pth: not an ALPNet checkpoint"),
    ({"queries": ("missing",)}, FileNotFoundError, r"missing.nii.gz: no such file"),
    ({"queries": ("cut",)}, ValueError, r"query .*query_cut.nii.gz: corrupt or truncated image file"),
], ids=["label-absent", "support-geometry", "unreadable-query", "not-alpnet", "missing-query",
        "truncated-query"])
def test_bad_input_nothing_written(tmp_path, phantom, fixture_ckpt, broken, change, error, match):
    args = _bad(tmp_path, phantom, fixture_ckpt)
    for key, value in change.items():
        if key == "queries":
            args[key] = tuple(broken.get(v, tmp_path / f"{v}.nii.gz") for v in value)
        elif isinstance(value, str):
            args[key] = broken[value]
        else:
            args[key] = value
    with pytest.raises(error, match=match):
        segment(SegmentRequest(**args), progress=False)
    assert not (tmp_path / "out").exists()


def test_every_problem_reported_at_once(tmp_path, phantom, fixture_ckpt, broken):
    args = _bad(tmp_path, phantom, broken["other"])
    args.update(label=3, queries=(broken["text"], phantom["query"]), z_range=(2, 1), device="bogus")
    with pytest.raises(ValueError) as info:
        segment(SegmentRequest(**args), progress=False)
    text = str(info.value)
    for part in ("not an ALPNet checkpoint", "label value 3", "not a readable image",
                 "run one query at a time", "need 0 <= ZMIN <= ZMAX", "--device bogus: not a device"):
        assert part in text
    assert "6 problem(s)" in text
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the label-free rules

RULE_GRID = dict(size=(60, 60, 24), spacing=(2.5, 2.5, 6.0))   # 24 slices of 6 mm: the card's z


@pytest.fixture(scope="module")
def rule_scans(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Axial phantoms on the card's 6 mm slices (no tilt): a support with the organ low in the
    scan; a query whose whole anatomy lies 45 mm higher in the scan (a scan started lower on the
    patient), its organ high; a query without the organ; (image, label) files each."""
    folder = tmp_path_factory.mktemp("rule")
    size, spacing = RULE_GRID["size"], RULE_GRID["spacing"]
    origin = -np.array(size) * np.array(spacing) / 2
    grid = Grid(size, spacing, tuple(origin), np.eye(3))
    out = {}
    for name, seed, shift, organ in (("support", 0, 0.0, True), ("query", 1, 45.0, True),
                                     ("absent", 2, 0.0, False)):
        blobs = [Blob((0, 0, shift), (70, 60, 60), 1)]
        if organ:
            blobs.append(Blob((25, -15, shift - 25.0), ORGAN_SEMI_MM, 2, 1))
        image, label = render(grid, blobs, [Tissue(0, 0), Tissue(100, 5), Tissue(400, 5)],
                              np.random.default_rng(seed), noise_sd=5, rician=True)
        paths = (folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz")
        sitk.WriteImage(grid_image(grid, image.astype(np.float32)), str(paths[0]))
        sitk.WriteImage(grid_image(grid, label), str(paths[1]))
        out[name] = paths
    return out


@pytest.fixture(scope="module")
def r18_ckpt(tmp_path_factory) -> Path:
    """A ResNet-18 ALPNet with random weights (seed 0): untrained, its prototype match still
    peaks on the bright organ, which is all the rule needs to be tested end to end."""
    from models.grid_proto_fewshot import FewShotSeg

    torch.manual_seed(0)
    net = FewShotSeg(cfg={"which_model": "dlfcn_res18", "init_weights": "random"})
    return atomic_save_torch(net.state_dict(), tmp_path_factory.mktemp("r18") / "r18.pth")


def _slices_with(mask_zyx: np.ndarray) -> tuple[int, int]:
    zs = np.flatnonzero(mask_zyx.any(axis=(1, 2)))
    return int(zs[0]), int(zs[-1])


@pytest.mark.parametrize("rule", ["align", "support"])
def test_label_free_rule_finds_the_organ_slices(rule_scans, r18_ckpt, tmp_path, caplog, rule):
    """No ground truth (``align`` is the default): the query's predicted slices are the organ's
    true slices (the phantom's own label, resampled to 6 mm = the same grid here) within one
    slice; the query without the organ gets an empty mask, a warning and 'not found' in the CSV."""
    import logging

    sup_img, sup_lab = rule_scans["support"]
    req = dict(checkpoint=r18_ckpt, support_image=sup_img, support_label=sup_lab, label=1,
               dataset="SEGTEST", overlay_slices=0, rule=rule)
    with caplog.at_level(logging.WARNING, logger="util.segment.run"):
        rep = segment(SegmentRequest(**req, queries=(rule_scans["query"][0], rule_scans["absent"][0]),
                                     out=tmp_path / "out"), progress=False)
    found, absent = rep.results
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(rule_scans["query"][1]))) > 0
    true_first, true_last = _slices_with(truth)
    # slice k lies at -72 + 6k mm; the organ (semi-axis 22 mm around +20 mm) holds those with
    # |-72 + 6k - 20| < 22: k = 12..18, high in the scan; the support's (around -25 mm): k = 5..11
    assert (true_first, true_last) == (12, 18)
    assert _slices_with(sitk.GetArrayFromImage(sitk.ReadImage(str(sup_lab))) > 0) == (5, 11)
    assert found.predicted_range is not None
    assert abs(found.predicted_range[0] - true_first) <= 1 and abs(found.predicted_range[1] - true_last) <= 1
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(found.mask))) > 0
    first, last = _slices_with(mask)
    assert true_first - 1 <= first and last <= true_last + 1     # nothing painted elsewhere
    assert found.how.startswith(f"label-free {rule}: slices")
    assert absent.voxels == 0 and absent.predicted_range is None
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(absent.mask))).any()
    assert "not found" in absent.how
    assert any("absent" in r.getMessage() and "not found" in r.getMessage() for r in caplog.records)
    rows = list(csv.DictReader((tmp_path / "out" / "volumes_label1.csv").open(encoding="utf-8")))
    assert rows[0]["predicted_range"] == f"{found.predicted_range[0]}-{found.predicted_range[1]}"
    assert rows[1]["predicted_range"] == "" and "not found" in rows[1]["how"]


def test_bf16_segments_as_fp32_does(rule_scans, r18_ckpt, tmp_path, monkeypatch):
    """``--precision bf16``: the encoder runs under bf16 autocast (seen by a forward hook) and
    the written mask matches the fp32 one (Dice >= 0.95, the same predicted slice range within
    one slice); a precision that is not offered is refused by the pre-flight."""
    from util.segment import checkpoint_info

    sup_img, sup_lab = rule_scans["support"]
    req = dict(checkpoint=r18_ckpt, support_image=sup_img, support_label=sup_lab, label=1,
               dataset="SEGTEST", overlay_slices=0, queries=(rule_scans["query"][0],))
    dtypes = []
    build = checkpoint_info.build_model

    def spying(model_cfg, **kw):
        model = build(model_cfg, **kw)
        model.encoder.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
        return model

    monkeypatch.setattr(checkpoint_info, "build_model", spying)
    fp32 = segment(SegmentRequest(**req, out=tmp_path / "fp32"), progress=False).results[0]
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    bf16 = segment(SegmentRequest(**req, out=tmp_path / "bf16", precision="bf16"), progress=False).results[0]
    assert set(dtypes) == {torch.bfloat16}
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(r.mask))) for r in (fp32, bf16))
    assert a.any() and _dice(a, b) >= 0.95
    assert all(abs(x - y) <= 1 for x, y in zip(fp32.predicted_range, bf16.predicted_range))
    with pytest.raises(ValueError, match="--precision fp16"):
        segment(SegmentRequest(**req, out=tmp_path / "bad", precision="fp16"), progress=False)
    assert not (tmp_path / "bad").exists()
