"""benchmarks/gpu.py in its dry mode: the GPU machine's first command runs end to end on a CPU
(gloo, tiny sizes, 2 ranks standing in for all GPUs) and prints its one table."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from benchmarks.gpu import DRY, TRAIN_CASES, Row, synthetic_batch, table

ROOT = Path(__file__).resolve().parents[1]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_dry_run_end_to_end():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry"], cwd=ROOT, env=env, text=True,
                         encoding="utf-8", capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = [_cells(line) for line in res.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    header, body = rows[0], rows[1:]
    assert header[:4] == ["measurement", "devices", "precision", "batch/rank"]
    col = {name: i for i, name in enumerate(header)}
    train = [r for r in body if r[0] == "train"]
    assert [(r[col["precision"]], int(r[col["batch/rank"]])) for r in train] == list(TRAIN_CASES)
    for r in train:   # episodes/s = steps/s x batch, to the printed rounding (0.005 each, steps/s times batch)
        batch = int(r[col["batch/rank"]])
        assert abs(float(r[col["episodes/s"]]) - float(r[col["steps/s"]]) * batch) <= 0.005 * (batch + 1) + 1e-9
    (ddp,) = [r for r in body if r[0] == "train DDP"]
    assert ddp[col["devices"]] == "2 gloo ranks" and float(ddp[col["steps/s"]]) > 0
    one, two = [r for r in body if r[0] == "validation fold 0"]
    assert (one[col["devices"]], two[col["devices"]]) == ("CPU", "2 gloo ranks")
    assert 0 < float(one[col["mean Dice"]]) <= 1 and one[col["mean Dice"]] == two[col["mean Dice"]]
    assert two[col["note"]] == "Dice equal to 1 device: yes"


def test_synthetic_batch_layout():
    ep = synthetic_batch(3, 32, torch.device("cpu"), seed=2)
    (sup,), qry = ep["support_images"][0], ep["query_images"][0]
    assert sup.shape == qry.shape == (3, 3, 32, 32)
    fg = ep["support_mask"][0][0]["fg_mask"]
    assert fg.shape == (3, 32, 32) and fg.sum() == 3 * 16 * 16                  # a 16 x 16 organ each
    assert torch.equal(ep["support_mask"][0][0]["bg_mask"], 1 - fg)
    assert ep["query_labels"][0].dtype == torch.int64 and ep["index"].tolist() == [6, 7, 8]
    assert DRY.dry and DRY.hw <= 64


def test_table_marks_missing_values():
    text = table([Row("train", "1 GPU", "bf16", "4", 2.0, 8.0, 1.5), Row("validation fold 0", "8 GPUs", dice=0.75)])
    lines = text.splitlines()
    assert _cells(lines[2])[4:8] == ["2.00", "8.00", "1.50", "-"]
    assert _cells(lines[3])[4:8] == ["-", "-", "-", "0.750000"]


def test_dice_agreement_exact_on_cpu_within_tolerance_on_gpus():
    from benchmarks.gpu import GPU_DICE_TOL, dice_agree

    assert dice_agree(0.5, [0.5, 0.5], "cpu")
    assert not dice_agree(0.5, [0.5 + 1e-9, 0.5 + 1e-9], "cpu")            # CPU: bit for bit
    assert dice_agree(0.5, [0.5 + GPU_DICE_TOL / 2] * 2, "cuda")
    assert not dice_agree(0.5, [0.5 + 2 * GPU_DICE_TOL] * 2, "cuda")
    assert not dice_agree(0.5, [0.5, 0.5001], "cuda")                      # ranks always agree exactly
