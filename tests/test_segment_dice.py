"""benchmarks.segment_dice pieces by hand: which scans a checkpoint's config names, the float16
cache keeping the sign of every margin, Dice, the table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.segment_dice import FoldPlan, MarginCache, _to_f16, dice, fold_plan, markdown, summary_markdown
from data.cards import load_card

CHAOS_IDS = (1, 2, 3, 5, 8, 10, 13, 15, 19, 20, 21, 22, 31, 32, 33, 34, 36, 37, 38, 39)


@pytest.fixture()
def chaos_names(tmp_path) -> Path:
    """A folder listing the 20 CHAOS image names (empty files: only the names are read)."""
    for sid in CHAOS_IDS:
        (tmp_path / f"image_{sid}.nii.gz").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("config, expected", [
    ({"eval_fold": 0, "label_sets": 0}, FoldPlan(0, 0, (1, 2, 3, 5), 8, (2, 3))),
    ({"eval_fold": 0, "label_sets": 1}, FoldPlan(0, 1, (1, 2, 3, 5), 8, (1, 4))),
    ({"eval_fold": 1, "label_sets": 0}, FoldPlan(1, 0, (8, 10, 13, 15), 19, (2, 3))),
    ({}, FoldPlan(0, 0, (1, 2, 3, 5), 8, (2, 3))),          # a bare state_dict: the defaults
], ids=["fold0-kidneys", "fold0-liver-spleen", "fold1-kidneys", "no-config"])
def test_fold_plan_from_the_config(chaos_names, config, expected):
    # sorted ids, separators [0, 4, 8, ...]: fold k validates ids[4k : 4k + 5], the last the support
    assert fold_plan(config, load_card("CHAOST2"), chaos_names) == expected


def test_fold_plan_other_organs(chaos_names):
    card = load_card("CHAOST2")
    plan = fold_plan({"eval_fold": 0, "label_sets": 0}, card, chaos_names, [1, 4])
    assert plan == FoldPlan(0, 0, (1, 2, 3, 5), 8, (1, 4))
    with pytest.raises(ValueError, match=r"--organs=\[5\]: label\(s\) \[5\] not in dataset CHAOST2"):
        fold_plan({}, card, chaos_names, [5])


def test_float16_cache_keeps_every_sign(tmp_path):
    margins = np.array([1e-9, -1e-9, 0.0, 3.5, -70000.0, 2e-8], np.float32).reshape(1, 1, 2, 3)
    f16 = _to_f16(margins)
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16 > 0, margins > 0)        # 1e-9 and 2e-8 would round to 0
    ckpt = tmp_path / "net.pth"
    ckpt.write_bytes(b"weights")
    cache = MarginCache(tmp_path / "cache", ckpt)
    assert cache.get(2, 8) is None
    cache.put(2, 8, margins)
    back = cache.get(2, 8)
    assert back.dtype == np.float32 and back.shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(back > 0, margins > 0)
    assert back[0, 0, 1, 0] == np.float32(3.5)
    assert back[0, 0, 1, 1] == np.float32(-65504.0)            # clipped to float16's range
    assert MarginCache(None, ckpt).get(2, 8) is None           # no folder: no cache


def test_dice_by_hand():
    pred = np.array([[1, 1, 0], [0, 1, 0]], bool)
    truth = np.array([[1, 0, 0], [0, 1, 1]], bool)
    assert dice(pred, truth) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert dice(np.zeros(3, bool), np.ones(3, bool)) == 0.0


def test_markdown_table():
    rows = [{"scan": 1, "organ": 2, "truth": [3, 9], "protocol": 0.5,
             "support": {"whole": 0.4, "true_slices": 0.45, "extent": [4, 9]}},
            {"scan": 2, "organ": 2, "truth": [1, 5], "protocol": 0.3,
             "support": {"whole": 0.2, "true_slices": 0.25, "extent": None}}]
    text = markdown(rows, ["support"], ("BG", "LIVER", "RK", "LK", "SPLEEN"))
    lines = text.splitlines()
    assert lines[0] == "| scan | organ | truth | protocol | `support` |"
    assert lines[2] == "| 1 | RK | 3-9 | 0.500 | 0.400 (0.450) 4-9 |"
    assert lines[3] == "| 2 | RK | 1-5 | 0.300 | 0.200 (0.250) - |"
    assert lines[4] == "| mean | | | **0.400** | **0.300** (0.350) |"
    # means: protocol (0.5 + 0.3) / 2 = 0.4, support whole 0.3 (0.75 of it), true slices 0.35
    summary = summary_markdown(rows, ["support"]).splitlines()
    assert summary[2] == "| protocol (`--z-range` = ground truth) | 0.400 | 0.400 | 1.00 |"
    assert summary[3] == "| `support` | 0.300 | 0.350 | 0.75 |"
