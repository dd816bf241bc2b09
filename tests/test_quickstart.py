"""The quickstart: ``examples/quickstart.sh`` end to end in a shortened run (5 synthetic scans,
2 training steps, one label group), its helper steps (``examples/quickstart_tools.py``), the
named config ``quickstart`` and the card ``CHAOST2_128`` it uses.

The end-to-end test recomputes the Dice of the closing table from the prediction files and the
label files (not from the code that printed it), and checks that training could not see a label.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import training  # noqa: F401  (registers the command 'main')
from config_ssl_upload import ex
from data.cards import load_card
from examples import quickstart_tools as qt
from tests.tinydata import build_tiny_dataset
from util.checkpoint import read_snapshot

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "quickstart.sh"
CARD = "CHAOST2_128"
DATASET = CARD + "_Superpix"
OUTPUT_STRIDE = 8                 # SPEC §4: 256 x 256 -> 32 x 32


# ------------------------------------------------------------------ config and card

def _full_config(tmp_path, **updates) -> dict:
    run = ex.run("print_config", named_configs=["quickstart"],
                 config_updates={"path": {"log_dir": str(tmp_path / "runs")}, **updates})
    return run.config


def test_quickstart_config_differs_from_the_paper_only_where_documented(tmp_path):
    """Every key the named config changes is one the quickstart documents; the rest keeps the
    paper's values (SPEC §7)."""
    base = ex.run("print_config", config_updates={"path": {"log_dir": str(tmp_path / "a")}}).config
    quick = _full_config(tmp_path)
    changed = {k for k in base if k not in ("path",) and base[k] != quick[k]}
    assert changed == {"dataset", "exclude_cls_list", "modelname", "init_weights", "feature_hw",
                       "n_steps", "lr_milestones", "num_workers", "model", "exp_str"}
    assert quick["n_steps"] < quick["save_snapshot_every"]   # one snapshot: the final one
    # what must stay as in the paper
    assert (quick["optim"], quick["which_aug"], quick["proto_grid_size"], quick["val_wsize"],
            quick["n_sup_part"], quick["usealign"], quick["use_wce"], quick["seed"]) == \
        ({"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0005}, "sabs_aug", 8, 2, 3, True, True, 1234)
    assert quick["exclude_cls_list"] == []          # setting 1: no label read in training
    assert quick["lr_milestones"] == []             # < 1000 steps: no decay, as the paper's start
    m = quick["model"]
    assert (m["which_model"], m["init_weights"], m["feature_hw"]) == ("dlfcn_res18", "random", [16, 16])


def test_feature_grid_matches_the_card_and_the_encoder(tmp_path):
    """feature_hw = the card's slice size / output stride, and the encoder really gives that grid;
    the training window is then 2 cells = 16 px = 40 mm, the paper's 4 cells at 1.25 mm."""
    card = load_card(CARD)
    prep = card.extra["preprocessing"]
    quick = _full_config(tmp_path)
    assert [s // OUTPUT_STRIDE for s in prep["size_xy"]] == quick["feature_hw"]
    from models.grid_proto_fewshot import FewShotSeg
    model = FewShotSeg(cfg={**quick["model"], "align": True}).eval()
    with torch.no_grad():
        fts = model.encode(torch.zeros(1, 3, *prep["size_xy"]))
    assert tuple(fts.shape[-2:]) == tuple(quick["feature_hw"])
    window = quick["feature_hw"][0] // quick["proto_grid_size"]
    assert window * OUTPUT_STRIDE * prep["spacing"][0] == 4 * OUTPUT_STRIDE * 1.25   # 40 mm
    ref = load_card("CHAOST2")
    assert (card.labels, card.pa_all, card.groups) == (ref.labels, ref.pa_all, ref.groups)
    assert card.fold_separators is None            # five folds from any number of scans


# ------------------------------------------------------------------ helper steps

def test_training_view_links_images_and_superpixels_only(tmp_path):
    tiny = build_tiny_dataset(tmp_path / "data", CARD, n_scans=5, hw=32, depth=2, block=8)
    made = qt.training_view(tiny.data_dir, tmp_path / "view", CARD)
    names = sorted(p.name for p in (tmp_path / "view").iterdir())
    want = sorted(f"{kind}_{sid}.nii.gz" for kind in ("image", "fgmask") for sid in tiny.scan_ids)
    want = sorted(want + [f"superpix-MIDDLE_{sid}.nii.gz" for sid in tiny.scan_ids])
    assert names == want and len(made) == len(want)
    assert not any(n.startswith(("label_", "classmap_")) for n in names)
    link = tmp_path / "view" / "image_3.nii.gz"
    assert link.is_symlink() and link.resolve() == (tiny.data_dir / "image_3.nii.gz").resolve()
    # a label that slipped into the view is refused
    (tmp_path / "view" / "label_3.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="label_3.nii.gz"):
        qt.training_view(tiny.data_dir, tmp_path / "view", CARD)


def test_newest_run_is_the_highest_numeric_id(tmp_path):
    for name in ("9", "10", "2", "_sources"):
        (tmp_path / name).mkdir()
    assert qt.newest_run(tmp_path) == tmp_path / "10"
    with pytest.raises(FileNotFoundError, match="no Sacred run"):
        qt.newest_run(tmp_path / "9")


def _fake_val_run(folder: Path, label_sets: int, steps: list[int], values: list[list[float]]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"dataset": DATASET, "label_sets": label_sets}), encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps(
        {qt.DICE_METRIC: {"steps": steps, "values": values, "timestamps": ["t"] * len(steps)}}))
    return folder


def test_report_table_from_metrics(tmp_path):
    # group 0 tests RK, LK; group 1 LIVER, SPLEEN (CHAOS label groups, SPEC §1)
    v0 = _fake_val_run(tmp_path / "v0", 0, [0, 600], [[0.2, 0.4], [0.6, 0.7]])
    v1 = _fake_val_run(tmp_path / "v1", 1, [0, 600], [[0.5, 0.1], [0.76, 0.5]])
    (tmp_path / "v1" / "step_600" / "figures").mkdir(parents=True)
    (tmp_path / "v1" / "step_600" / "figures" / "label_1_LIVER.png").write_bytes(b"png")
    text = qt.report(tmp_path / "train", [v0, v1])
    rows = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines()
            if ln.split() and ln.split()[0] in ("RK", "LK", "LIVER", "SPLEEN", "mean")}
    assert rows["RK"] == ["20.0", "60.0", "+40.0"]
    assert rows["SPLEEN"] == ["10.0", "50.0", "+40.0"]
    assert rows["LIVER"] == ["50.0", "76.0", "+26.0"]
    # means: before (0.2 + 0.4 + 0.5 + 0.1) / 4 = 0.3, after (0.6 + 0.7 + 0.76 + 0.5) / 4 = 0.64
    assert rows["mean"] == ["30.0", "64.0", "+34.0"]
    assert "trained (step 600)" in text
    assert str(tmp_path / "v1" / "step_600" / "figures" / "label_1_LIVER.png") in text


def test_before_after_stacks_step_zero_above_the_last_step(tmp_path):
    from matplotlib import image as mpimg
    top = np.zeros((4, 6, 4), np.float32)
    top[..., 3] = 1
    bottom = top.copy()
    bottom[..., 0] = 1                                   # red: the trained one
    for step, img in ((0, top), (600, bottom)):
        (tmp_path / f"step_{step}" / "figures").mkdir(parents=True)
        mpimg.imsave(tmp_path / f"step_{step}" / "figures" / "label_2_RK.png", img)
    (tmp_path / "step_0" / "figures" / "label_3_LK.png").write_bytes(b"")   # no step-600 twin
    (out,) = qt.before_after_figures(tmp_path, 600)
    assert out == tmp_path / qt.BEFORE_AFTER_DIR / "label_2_RK.png"
    both = mpimg.imread(out)
    assert both.shape[:2] == (8, 6)
    assert (both[:4, :, 0] == 0).all() and (both[4:, :, 0] == 1).all()


def test_report_needs_step_zero(tmp_path):
    v = _fake_val_run(tmp_path / "v", 0, [600], [[0.6, 0.7]])
    with pytest.raises(ValueError, match=r"expected 0 and a trained one"):
        qt.report(tmp_path / "train", [v])


def test_init_snapshot_is_the_network_training_started_from(tmp_path):
    """With lr 0 one training step leaves every parameter as initialised: the step-1 snapshot's
    parameters must equal those of the rebuilt snapshot 0 (BatchNorm running statistics move in
    the forward pass and are not compared)."""
    tiny = build_tiny_dataset(tmp_path / "data", CARD, n_scans=5, hw=64, depth=2, block=16)
    run = ex.run("main", named_configs=["quickstart"], config_updates={
        "path": {"log_dir": str(tmp_path / "runs"), DATASET: {"data_dir": str(tiny.data_dir)}},
        "n_steps": 1, "save_snapshot_every": 1, "optim": {"lr": 0.0}})
    assert run.status == "COMPLETED"
    run_dir = qt.newest_run(tmp_path / "runs" / f"mySSL_{run.config['exp_str']}")
    zero = read_snapshot(qt.init_snapshot(run_dir))
    one = read_snapshot(run_dir / "snapshots" / "1.pth")
    assert zero["step"] == 0 and zero["config"]["seed"] == run.config["seed"]
    from models.builder import build_model
    params = {name for name, _ in build_model(run.config["model"]).named_parameters()}
    assert params and set(zero["model"]) == set(one["model"])
    for name in params:
        assert torch.equal(zero["model"][name], one["model"][name]), name
    # and a different seed gives a different network (the comparison above can fail)
    other = ex.run("main", named_configs=["quickstart"], config_updates={
        "path": {"log_dir": str(tmp_path / "runs2"), DATASET: {"data_dir": str(tiny.data_dir)}},
        "n_steps": 1, "save_snapshot_every": 1, "optim": {"lr": 0.0}, "seed": 4321})
    other_dir = qt.newest_run(tmp_path / "runs2" / f"mySSL_{other.config['exp_str']}")
    w = "encoder.localconv.weight"
    assert not torch.equal(read_snapshot(other_dir / "snapshots" / "1.pth")["model"][w], zero["model"][w])


# ------------------------------------------------------------------ the script itself

def _script(env_extra: dict, tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "QUICKSTART_NO_INSTALL": "1", **env_extra}
    return subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout)


@pytest.mark.parametrize("env, message", [
    ({"QUICKSTART_SCANS": "3"}, "at least 5 scans"),
    ({"QUICKSTART_STEPS": "ten"}, "positive number of steps"),
    ({"QUICKSTART_GROUPS": "2"}, "label groups"),
], ids=["too-few-scans", "steps-not-a-number", "unknown-group"])
def test_script_rejects_bad_settings_before_any_work(tmp_path, env, message):
    out = _script({"QUICKSTART_OUT": str(tmp_path / "qs"), **env}, tmp_path, timeout=60)
    assert out.returncode == 2 and message in out.stderr
    assert not (tmp_path / "qs").exists()


def _read_zyx(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _dice_on_counted_slices(pred_zyx: np.ndarray, label_zyx: np.ndarray, organ: int) -> float:
    """SPEC §6: TP/FP/FN over the slices from the first to the last one holding the organ."""
    gt = label_zyx == organ
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    sl = slice(zs[0], zs[-1] + 1)
    p, g = pred_zyx[sl] > 0, gt[sl]
    tp, fp, fn = (p & g).sum(), (p & ~g).sum(), (~p & g).sum()
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.slow
def test_quickstart_script_end_to_end(tmp_path):
    out_dir = tmp_path / "qs"
    steps = 2
    res = _script({"QUICKSTART_OUT": str(out_dir), "QUICKSTART_SCANS": "5",
                   "QUICKSTART_STEPS": str(steps), "QUICKSTART_GROUPS": "1"}, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = res.stdout

    # training saw images and superpixels only, and was setting 1
    view = out_dir / "train_view"
    names = [p.name for p in view.iterdir()]
    assert names and not any(n.startswith(("label_", "classmap_")) for n in names)
    train_run = Path(re.search(r"training:\s+(\S+)", text).group(1))
    cfg = json.loads((train_run / "config.json").read_text(encoding="utf-8"))
    assert cfg["exclude_cls_list"] == [] and cfg["dataset"] == DATASET
    assert cfg["path"][DATASET]["data_dir"] == str(view)
    snaps = {p.name for p in (train_run / "snapshots").iterdir()}
    assert snaps == {"0.pth", f"{steps}.pth"}
    w0 = read_snapshot(train_run / "snapshots" / "0.pth")["model"]
    w1 = read_snapshot(train_run / "snapshots" / f"{steps}.pth")["model"]
    assert not torch.equal(w0["encoder.localconv.weight"], w1["encoder.localconv.weight"])

    # the closing table equals the Dice recomputed from the written predictions and the labels;
    # 5 scans: fold 0 validates scans 1 and 2, scan 2 is the support, scan 1 the only query
    val_run = Path(re.search(r"validation:\s+(\S+)", text).group(1))
    table = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines()
             if ln.split() and ln.split()[0] in ("LIVER", "SPLEEN", "mean")}
    assert set(table) == {"LIVER", "SPLEEN", "mean"}
    label = _read_zyx(out_dir / "data" / "label_1.nii.gz")
    for organ, name in ((1, "LIVER"), (4, "SPLEEN")):
        for col, step in ((0, 0), (1, steps)):
            pred = _read_zyx(val_run / f"step_{step}" / "interm_preds" / f"scan_1_label_{organ}.nii.gz")
            assert set(np.unique(pred)) <= {0, organ}
            want = 100 * _dice_on_counted_slices(pred, label, organ)
            assert abs(float(table[name][col]) - want) <= 0.051, (name, step, table[name], want)
    # the figures the summary lists exist
    after = text.split("\nFigures")[1].splitlines()[1:]
    figures = [Path(ln.strip()) for ln in after[: after.index("")] if ln.startswith("  ")]
    assert figures and all(f.is_file() and f.suffix == ".png" for f in figures)
    assert any("step_0" in str(f) for f in figures) and any(f"step_{steps}" in str(f) for f in figures)
    stacked = val_run / qt.BEFORE_AFTER_DIR / "label_1_LIVER.png"
    assert stacked in figures
    assert "quickstart finished" in text


@pytest.mark.parametrize("load, cores, policy", [
    (0.0, 2, ""), (2.0, 2, ""), (3.99, 2, ""), (4.0, 2, "PASSIVE"), (7.0, 2, "PASSIVE"),
    (15.9, 8, ""), (16.0, 8, "PASSIVE"),
])
def test_omp_wait_sleeps_only_on_crowded_cores(load, cores, policy):
    """Spinning waits beat sleeping ones beside one other torch process (load 1 per core) and
    lose beside three (docs/training.md, 'Speed on the CPU'): PASSIVE from 2 per core."""
    assert (qt.omp_wait_policy(load, cores) or "") == policy
    res = subprocess.run([sys.executable, "-m", "examples.quickstart_tools", "omp-wait", "--load", str(load),
                          "--cores", str(cores)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == policy + "\n", res.stderr


def test_quickstart_keeps_the_callers_omp_wait_policy_and_asks_otherwise():
    """The script consults omp-wait only when OMP_WAIT_POLICY is unset, before any stage runs."""
    text = SCRIPT.read_text(encoding="utf-8")
    check = text.index('if [[ -z "${OMP_WAIT_POLICY:-}" ]]; then')
    assert text.index("-m examples.quickstart_tools omp-wait", check) < text.index('stage "1/5')
    assert 'export OMP_WAIT_POLICY="$WAIT_POLICY"' in text[check:text.index('stage "1/5')]
