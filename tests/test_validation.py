"""Validation end to end on a tiny dataset (dlfcn_res18, random weights, 64 x 64 slices):
batched inference equals the original one-slice-at-a-time forward, outputs and Sacred metrics,
several snapshots, multi-shot, and the bad inputs of issue 4."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.tinydata import build_tiny_dataset, write_hwz
from util.checkpoint import save_snapshot
from util.validation.protocol import (
    OrganMissingError,
    SupportScan,
    assign_parts,
    build_support,
    organ_z_range,
    predict_one_at_a_time,
    predict_volume,
)

DEPTH = 8
MODEL = "dlfcn_res18"
SPEC6_NAMES = ("mar_val_batches_classDice", "mar_val_batches_meanDice", "mar_val_batches_rawDice",
               "mar_val_batches_classPrec", "mar_val_batches_meanPrec", "mar_val_batches_rawPrec",
               "mar_val_batches_classRec", "mar_val_al_batches_meanRec", "mar_val_al_batches_rawRec")


def tiny_model(seed: int = 0):
    from models.grid_proto_fewshot import FewShotSeg

    torch.manual_seed(seed)
    return FewShotSeg(cfg={"which_model": MODEL, "init_weights": "random"}).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions gain nothing from a second thread (and lose a lot on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny") / "CHAOST2", "CHAOST2", depth=DEPTH)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """Two snapshots (steps 10 and 20) of different random tiny models, as training writes them."""
    folder = tmp_path_factory.mktemp("snaps") / "snapshots"
    for step, seed in ((10, 0), (20, 1)):
        save_snapshot(folder / f"{step}.pth", model=tiny_model(seed), step=step,
                      config={"modelname": MODEL, "dataset": "CHAOST2_Superpix"})
    return folder


def run_validation_exp(tiny, tmp_path, reload_model_path, **updates):
    from validation import ex

    cfg = dict(dataset="CHAOST2_Superpix", modelname=MODEL, num_workers=0,
               reload_model_path=str(reload_model_path) if isinstance(reload_model_path, Path)
               else reload_model_path, val_batch_size=3,
               path={"log_dir": str(tmp_path / "runs"), "CHAOST2": {"data_dir": str(tiny.data_dir)},
                     "CHAOST2_Superpix": {"data_dir": str(tiny.data_dir)}})
    cfg.update(updates)
    run = ex.run("validation_main", config_updates=cfg)
    run_dir = Path(run.observers[0].dir)
    return run, run_dir, json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))


def dice_by_hand(pred_zyx: np.ndarray, label_hwz: np.ndarray, c: int) -> float:
    """Dice of the written prediction over the organ's slices (z_margin 0), plain arithmetic."""
    gt = np.moveaxis(label_hwz == c, -1, 0)
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    p, g = pred_zyx[zs[0]:zs[-1] + 1] > 0, gt[zs[0]:zs[-1] + 1]
    return 2 * (p & g).sum() / (p.sum() + g.sum())


@pytest.mark.parametrize("n_shots", [1, 2], ids=["1-shot", "2-shot"])
def test_batched_equals_one_at_a_time(tiny, n_shots):
    from dataloaders.scans import load_scan

    model = tiny_model()
    scans = [load_scan(tiny.card, tiny.data_dir, sid, label=True) for sid in (5, 4, 2)]
    support = build_support(model, [SupportScan(s.scan_id, s.image, s.label) for s in scans[:n_shots]],
                            organ=2, npart=3)
    assert support.npart == 3 and support.parts[0].features.shape[0] == n_shots
    query = scans[2]
    parts = assign_parts(np.arange(DEPTH), *organ_z_range(query.label, 2), 3)
    batched = predict_volume(model, support, query.image, parts, batch_size=3)
    single = predict_one_at_a_time(model, support, query.image, parts)
    assert batched.shape == (DEPTH, tiny.hw, tiny.hw) and batched.dtype == np.uint8
    assert 0 < batched.sum() < batched.size            # a real prediction, not all one class
    np.testing.assert_array_equal(batched, single)


def test_one_slice_at_a_time_switch_gives_the_same_validation(tiny):
    """``EvalOptions(one_slice_at_a_time=True)`` (the original inference, which the validation
    benchmark times) gives the predictions and every metric of the default batched path."""
    import dataclasses

    from dataloaders.validation_set import load_validation_set
    from util.validation import EvalOptions, evaluate_snapshot

    vset = load_validation_set(tiny.card, tiny.data_dir, fold=0, label_sets=0)
    vset = dataclasses.replace(vset, queries=vset.queries[:2], query_ids=vset.query_ids[:2])
    model, cpu = tiny_model(), torch.device("cpu")
    ours = evaluate_snapshot(model, vset, EvalOptions(batch_size=3), device=cpu)
    old = evaluate_snapshot(model, vset, EvalOptions(batch_size=3, one_slice_at_a_time=True), device=cpu)
    for key in ("counts", "dice", "precision", "recall", "hd95", "assd"):
        np.testing.assert_array_equal(getattr(old, key), getattr(ours, key), err_msg=key)
    assert ours.preds.keys() == old.preds.keys() and len(ours.preds) == 4
    assert all(np.array_equal(ours.preds[k], old.preds[k]) for k in ours.preds)
    assert ours.counts[..., 0].sum() > 0                      # some organ pixels found: not vacuous


def test_support_without_organ_is_a_named_error(tiny):
    lab = np.zeros((tiny.hw, tiny.hw, DEPTH), np.int16)
    with pytest.raises(OrganMissingError, match="support scan 7 holds no voxel of label 2"):
        build_support(tiny_model(), [SupportScan(7, np.zeros(lab.shape, np.float32), lab)], 2, 3)


@pytest.fixture(scope="module")
def single_run(tiny, snapshots, tmp_path_factory):
    """One validation of snapshot 10 with figures: (run, run_dir, metrics)."""
    return run_validation_exp(tiny, tmp_path_factory.mktemp("single"), snapshots / "10.pth",
                              write_figures=True)


def test_validation_run_outputs(tiny, single_run):
    run, run_dir, metrics = single_run
    for name in SPEC6_NAMES + ("mar_val_batches_rawHD95", "mar_val_batches_rawASSD"):
        assert name in metrics, name
        assert metrics[name]["steps"] == [10]
    raw = np.array(metrics["mar_val_batches_rawDice"]["values"][0])
    assert raw.shape == (4, 2)                              # queries 1..4 (support 5) x RK, LK
    # every prediction file: the preprocessed geometry, values {0, c}; Dice recomputed by hand
    for qi, sid in enumerate([1, 2, 3, 4]):
        label = tiny.label(sid)
        for ci, c in enumerate([2, 3]):
            img = sitk.ReadImage(str(run_dir / "interm_preds" / f"scan_{sid}_label_{c}.nii.gz"))
            ref = sitk.ReadImage(str(tiny.data_dir / f"image_{sid}.nii.gz"))
            assert img.GetSize() == ref.GetSize() and img.GetSpacing() == ref.GetSpacing()
            arr = sitk.GetArrayFromImage(img)
            assert set(np.unique(arr)) <= {0, c}
            assert raw[qi, ci] == pytest.approx(dice_by_hand(arr, label, c))
    assert np.mean(raw, axis=0) == pytest.approx(metrics["mar_val_batches_classDice"]["values"][0])
    assert sorted(p.name for p in (run_dir / "figures").glob("*.png")) == ["label_2_RK.png", "label_3_LK.png"]
    assert not list(run_dir.rglob(".*tmp*"))               # no temporary left behind
    assert "| **Dice** |" in (run_dir / "cout.txt").read_text(encoding="utf-8")
    # the summary table finds this run: one fold of setting 2 (exclude [2, 3]), kidneys
    from util.summarize import summarize
    (row,) = summarize([run_dir.parent])
    assert (row.setting, row.cells[1].n, row.cells[0].n) == (2, 1, 0)
    assert row.cells[1].mean == pytest.approx(100 * metrics["mar_val_batches_classDice"]["values"][0][0])


def test_validation_tensorboard_events_at_the_snapshot_step(single_run):
    """The run folder's event file: every metric per organ and its mean at step 10 (the
    snapshot's), equal to metrics.json, and each figure as an image."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, metrics = single_run
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag, name in (("dice", "Dice"), ("precision", "Prec"), ("hd95_mm", "HD95"), ("assd_mm", "ASSD")):
        for organ, want in zip(("RK", "LK"), metrics[f"mar_val_batches_class{name}"]["values"][0]):
            (step, got), = scalars[f"val/{tag}/{organ}"]
            assert step == 10 and got == pytest.approx(want, rel=1e-6)
    (step, mean), = scalars["val/dice/mean"]
    assert step == 10 and mean == pytest.approx(metrics["mar_val_batches_meanDice"]["values"][0], rel=1e-6)
    assert {f"val/recall/{o}" for o in ("RK", "LK", "mean")} <= set(scalars)
    assert sorted(acc.Tags()["images"]) == ["figures/label_2_RK", "figures/label_3_LK"]
    assert [e.step for e in acc.Images("figures/label_2_RK")] == [10]


def test_several_snapshots_logged_with_their_step(tiny, snapshots, single_run, tmp_path):
    # the snapshots folder: 10.pth and 20.pth, each logged with its step; step 10 as alone
    _, run_dir, metrics = run_validation_exp(tiny, tmp_path, snapshots, write_figures=False)
    assert metrics["mar_val_batches_meanDice"]["steps"] == [10, 20]
    raw = metrics["mar_val_batches_rawDice"]["values"]
    assert raw[0] == single_run[2]["mar_val_batches_rawDice"]["values"][0]
    assert raw[0] != raw[1]                                # another network, other numbers
    assert (run_dir / "step_20" / "interm_preds" / "scan_1_label_2.nii.gz").is_file()


def test_two_shot_uses_two_support_scans(tiny, snapshots, tmp_path):
    """fold 0 with 2 shots: the fold's validation list stays 1..5 (4 scans + 1), supports 4 and
    5, queries 1..3 (the supports never come from training scans); scans read by 2 threads
    give exactly the metrics and predictions of reading them one after the other."""
    runs = {}
    for workers in (2, 0):
        run, run_dir, metrics = run_validation_exp(tiny, tmp_path / f"w{workers}", snapshots / "10.pth",
                                                   write_figures=False, task={"n_shots": 2},
                                                   num_workers=workers)
        assert np.array(metrics["mar_val_batches_rawDice"]["values"][0]).shape == (3, 2)
        assert run.config["task"]["n_shots"] == 2 and run.config["num_workers"] == workers
        preds = {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
                 for p in sorted((run_dir / "interm_preds").glob("*.nii.gz"))}
        runs[workers] = ({k: v["values"] for k, v in metrics.items()}, preds)
    assert runs[2][0] == runs[0][0]
    assert runs[2][1].keys() == runs[0][1].keys() and len(runs[0][1]) == 3 * 2   # queries x organs
    assert all(np.array_equal(runs[2][1][k], runs[0][1][k]) for k in runs[0][1])


def _alp_score(qry, feats, masks, *, local: bool, thresh: float = 0.95, wsize: int = 2):
    """The ALP score written out (docs/method.md): B x C x h x w query features against the
    prototypes of Sh x C x h x w support features with Sh x h x w masks. ``local``: the pooled
    cells whose pooled mask exceeds ``thresh``, score = sum softmax(d) * d with d = 20 cos;
    else one prototype, the average over the shots of each shot's masked feature average,
    score = 20 cos."""
    def unit(x, dim):
        return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-4)

    if local:
        cells = torch.nn.functional.avg_pool2d(feats, wsize)                   # Sh x C x gh x gw
        keep = torch.nn.functional.avg_pool2d(masks[:, None], wsize)[:, 0] > thresh
        protos = cells.permute(0, 2, 3, 1)[keep]                               # K x C
        d = 20.0 * torch.einsum("kc,bchw->bkhw", unit(protos, 1), unit(qry, 1))
        return (torch.softmax(d, dim=1) * d).sum(dim=1)
    per_shot = [(f * m).sum((1, 2)) / (m.sum() + 1e-5) for f, m in zip(feats, masks)]
    proto = torch.stack(per_shot).mean(0)                                      # C
    return 20.0 * torch.nn.functional.cosine_similarity(qry, proto[None, :, None, None], dim=1, eps=1e-4)


def test_two_shot_prediction_is_the_hand_computed_prototype_average(tiny):
    """2-shot logits equal the ALP scores written out by hand from both shots' features (the
    background's local prototypes pooled over both shots, the foreground's prototype the average
    of the two shots' masked averages), and differ from the 1-shot logits."""
    from dataloaders.scans import load_scan
    from util.validation.protocol import encode_slices, predict_from_support

    model = tiny_model()
    scans = [load_scan(tiny.card, tiny.data_dir, sid, label=True) for sid in (5, 6, 2)]
    organ, query = 2, scans[2]
    zs = list(range(*organ_z_range(query.label, organ)))[:2]
    with torch.inference_mode():
        fts = encode_slices(model, query.image, zs)
        one = build_support(model, [SupportScan(s.scan_id, s.image, s.label) for s in scans[:1]], organ, 1)
        two = build_support(model, [SupportScan(s.scan_id, s.image, s.label) for s in scans[:2]], organ, 1)
        got = {n: predict_from_support(model, sup, fts, [0] * len(zs), img_size=(tiny.hw, tiny.hw))
               for n, sup in ((1, one), (2, two))}
        part = two.parts[0]
        assert part.features.shape[0] == 2 and part.slices[0][0] != part.slices[1][0]
        small = fts.shape[-2:]
        fg = torch.nn.functional.interpolate(part.fg[:, None], size=small, mode="bilinear")[:, 0]
        bg = torch.nn.functional.interpolate(part.bg[:, None], size=small, mode="bilinear")[:, 0]
        # the tiny organs are too small for local foreground prototypes: the 'mask' mode
        assert torch.nn.functional.avg_pool2d(fg[:, None], 4).max() < 0.95
        scores = torch.stack([_alp_score(fts, part.features, bg, local=True),
                              _alp_score(fts, part.features, fg, local=False)], dim=1)
        by_hand = torch.nn.functional.interpolate(scores, size=(tiny.hw, tiny.hw), mode="bilinear")
    torch.testing.assert_close(got[2], by_hand, rtol=1e-4, atol=1e-4)
    assert (got[2] - got[1]).abs().max() > 0.1                # the second shot changed the result


def test_query_without_organ_is_skipped(tmp_path, snapshots):
    tiny = build_tiny_dataset(tmp_path / "CHAOST2", "CHAOST2", depth=DEPTH)
    lab = tiny.label(2)
    lab[lab == 3] = 0                                       # scan 2 loses its left kidney
    write_hwz(lab, tiny.data_dir / "label_2.nii.gz")
    _, run_dir, metrics = run_validation_exp(tiny, tmp_path, snapshots / "10.pth", write_figures=False)
    raw = np.array(metrics["mar_val_batches_rawDice"]["values"][0], dtype=float)
    assert np.isnan(raw[1, 1]) and not np.isnan(raw).sum() > 1
    # LK's class mean over the three scans that have it
    assert metrics["mar_val_batches_classDice"]["values"][0][1] == pytest.approx(raw[[0, 2, 3], 1].mean())
    assert not (run_dir / "interm_preds" / "scan_2_label_3.nii.gz").exists()


@pytest.mark.parametrize("updates, error, match", [
    ({"eval_fold": 7}, ValueError, "eval_fold=7"),
    ({"support_idx": [9]}, ValueError, r"support_idx=\[9\]"),
    ({"reload_model_path": "MISSING"}, FileNotFoundError, "missing.pth"),
    ({"reload_model_path": "NOT_ALPNET"}, ValueError, "not an ALPNet checkpoint"),
], ids=["fold-out-of-range", "support-idx-out-of-range", "snapshot-missing", "not-alpnet"])
def test_bad_input(tiny, snapshots, tmp_path, updates, error, match):
    updates = dict(updates)
    if updates.get("reload_model_path") == "MISSING":
        updates["reload_model_path"] = str(tmp_path / "missing.pth")
    elif updates.get("reload_model_path") == "NOT_ALPNET":
        torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pth")
        updates["reload_model_path"] = str(tmp_path / "other.pth")
    updates.setdefault("reload_model_path", str(snapshots / "10.pth"))
    with pytest.raises(error, match=match):
        run_validation_exp(tiny, tmp_path, **updates)
    assert not list((tmp_path / "runs").rglob("interm_preds"))


def test_support_without_organ_and_missing_label(tmp_path, snapshots):
    tiny = build_tiny_dataset(tmp_path / "CHAOST2", "CHAOST2", depth=DEPTH)
    lab = tiny.label(5)
    lab[lab == 2] = 0                                       # the support scan loses its right kidney
    write_hwz(lab, tiny.data_dir / "label_5.nii.gz")
    with pytest.raises(OrganMissingError, match="support scan 5 holds no voxel of label 2"):
        run_validation_exp(tiny, tmp_path, snapshots / "10.pth")
    (tiny.data_dir / "label_3.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="label_3.nii.gz"):
        run_validation_exp(tiny, tmp_path, snapshots / "10.pth")


def _validate_without_modelname(tiny, tmp_path, snapshot, **updates):
    from validation import ex

    cfg = dict(dataset="CHAOST2_Superpix", num_workers=0, reload_model_path=str(snapshot),
               val_batch_size=3, write_figures=False, tensorboard=False,
               path={"log_dir": str(tmp_path / "runs"), "CHAOST2": {"data_dir": str(tiny.data_dir)}},
               **updates)
    return ex.run("validation_main", config_updates=cfg)


def test_network_options_come_from_the_snapshot(tiny, snapshots, single_run, tmp_path, caplog):
    """A ResNet-18 snapshot validated without modelname= (default dlfcn_res101): the network is
    built from the snapshot's config and gives the numbers of the run that named it."""
    import logging
    with caplog.at_level(logging.INFO, logger="util.validation.run"):
        run = _validate_without_modelname(tiny, tmp_path, snapshots / "10.pth")
    assert run.config["modelname"] == "dlfcn_res101"            # the command line said nothing
    metrics = json.loads((Path(run.observers[0].dir) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["mar_val_batches_rawDice"]["values"] == single_run[2]["mar_val_batches_rawDice"]["values"]
    assert "modelname='dlfcn_res18' from the snapshot" in caplog.text


def test_a_command_line_network_override_is_noted_and_a_misfit_names_the_key(tiny, snapshots, tmp_path,
                                                                             caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="util.validation.run"), \
            pytest.raises(ValueError, match="pass modelname=dlfcn_res18"):
        _validate_without_modelname(tiny, tmp_path, snapshots / "10.pth", modelname="dlfcn_res50")
    assert "modelname='dlfcn_res50' from the command line overrides the snapshot's" in caplog.text
    bare = tmp_path / "bare.pth"                                 # the original code's format
    torch.save(tiny_model().state_dict(), bare)
    with pytest.raises(ValueError, match=r"do not fit the network of modelname=dlfcn_res101: pass the "
                                         r"modelname it was trained with"):
        _validate_without_modelname(tiny, tmp_path, bare)
