"""Every benchmark runs in quick mode, its two paths agree and its ratio is a positive finite
number; a row may be "skipped" only where it needs the real CHAOS scans and they are absent
(the reason says so). The agreement checks themselves can fail: each is given a difference.

Each benchmark runs in its own Python process, as a user runs ``python -m benchmarks.<name>``:
some start worker processes, which must not inherit the state of the test process (seen here:
``ddp_scaling``'s forked ranks never finished when run inside pytest after the others)."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import benchmarks.__main__ as bench_main
from benchmarks.__main__ import BENCHMARKS, REAL_DATA_BENCHMARKS, table
from benchmarks.common import REAL_DATA_ABSENT, all_rows, alternate
from tests.realdata import chaos_dir

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = ("name", "what", "ratio", "target", "agree", "check", "details")


def check_row(name: str, row: dict, real_data: bool = True) -> None:
    """A row that passed: its own name, a description, a target, the two paths agreed and the
    ratio is a positive finite number. "skipped" only for a real-data row without the scans."""
    missing = [k for k in ROW_KEYS if k not in row]
    assert not missing, f"benchmark {name}: row lacks {missing}"
    assert row["name"] == name
    assert isinstance(row["what"], str) and row["what"]
    assert isinstance(row["target"], str) and row["target"]
    ratio = row["ratio"]
    if isinstance(ratio, str):
        assert ratio == "skipped", f"benchmark {name}: ratio {ratio!r}"
        assert name in REAL_DATA_BENCHMARKS, f"benchmark {name} needs no real data but was skipped"
        assert not real_data, f"benchmark {name} skipped although the real scans are present"
        assert row["details"].startswith(REAL_DATA_ABSENT), f"skipped without the reason: {row['details']!r}"
        assert row["agree"] is None
        return
    assert isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0, ratio
    assert row["agree"] is True, f"benchmark {name}: the two paths disagree: {row['check']}"


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_mode_agrees(name):
    code = ("import json, sys; from benchmarks import {0} as m; "
            "sys.stdout.write('ROW ' + json.dumps(m.run(quick=True), default=str))").format(name)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, encoding="utf-8",
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.rsplit("ROW ", 1)[1])
    main, *extra = all_rows(row)
    check_row(name, main, real_data=chaos_dir() is not None)
    for more in extra:                      # e.g. train_step's precision rows
        assert more["name"].startswith(f"{name}.")
        check_row(more["name"], more)
    row = main
    # the table renders it on one line with the agreement and machine columns
    line = table([row]).splitlines()[-1]
    assert line.startswith(f"| {name} | ") and line.count("|") == 7
    assert "| ok |" in line or "| not run |" in line


def test_check_row_rejects_broken_rows():
    """The row check can fail: a missing key, a foreign name, a NaN or negative ratio, paths
    that disagree, a skip without the reason or of a benchmark that needs no real data."""
    good = {"name": "validation", "what": "w", "ratio": 2.0, "target": ">= 1x", "agree": True,
            "check": "c", "details": ""}
    check_row("validation", good)
    skipped = {**good, "ratio": "skipped", "agree": None, "details": f"{REAL_DATA_ABSENT}: unset"}
    check_row("validation", skipped, real_data=False)
    for bad, real in (({k: v for k, v in good.items() if k != "target"}, True), ({**good, "name": "y"}, True),
                      ({**good, "ratio": math.nan}, True), ({**good, "ratio": -1.0}, True),
                      ({**good, "ratio": "fast"}, True), ({**good, "agree": False}, True),
                      (skipped, True), ({**skipped, "details": "no reason"}, False)):
        with pytest.raises(AssertionError):
            check_row("validation", bad, real_data=real)
    with pytest.raises(AssertionError, match="needs no real data"):
        check_row("metric", {**skipped, "name": "metric"}, real_data=False)


def test_cli_exits_nonzero_when_a_check_fails(monkeypatch, capsys):
    """``python -m benchmarks``: FAILED in the table and exit status 1 when two paths disagree."""
    rows = [{"name": "metric", "what": "w", "ratio": 3.0, "target": ">= 1x", "agree": True, "check": "c",
             "details": "d"},
            {"name": "segment", "what": "w", "ratio": 2.0, "target": ">= 1x", "agree": False,
             "check": "masks identical - differ", "details": "d"}]
    monkeypatch.setattr(bench_main, "collect", lambda names, quick: rows)
    assert bench_main.main(["--quick", "metric", "segment"]) == 1
    out = capsys.readouterr()
    assert "| segment | w | 2.00x | >= 1x | FAILED |" in out.out and "FAILED agreement check: segment" in out.err
    monkeypatch.setattr(bench_main, "collect", lambda names, quick: rows[:1])
    assert bench_main.main(["--quick", "metric"]) == 0


def test_alternate_runs_both_paths_in_turn():
    calls = []
    timings, a, b = alternate(lambda: calls.append("A") or 1, lambda: calls.append("B") or 2, 2, warmup=1)
    assert calls == ["A", "B"] * 3 and (a, b) == (1, 2)
    assert len(timings.baseline) == len(timings.ours) == 2 and timings.ratio > 0


def test_validation_comparison_sees_one_pixel():
    from benchmarks.validation import compare

    @dataclasses.dataclass
    class Res:
        counts: np.ndarray
        valid: np.ndarray
        dice: np.ndarray
        precision: np.ndarray
        recall: np.ndarray
        hd95: np.ndarray
        assd: np.ndarray
        preds: dict

    tables = [np.array([[0.5, np.nan]]) for _ in range(7)]
    a = Res(*tables, preds={(1, 2): np.zeros((2, 3, 3), np.uint8)})
    assert compare(a, dataclasses.replace(a)) == []                 # NaN equals NaN
    pred = np.zeros((2, 3, 3), np.uint8)
    pred[1, 2, 2] = 1
    assert compare(a, dataclasses.replace(a, preds={(1, 2): pred})) == ["prediction (1, 2): 1 px"]
    assert compare(a, dataclasses.replace(a, hd95=np.array([[0.5, 1.0]]))) == ["hd95"]


def test_pseudolabel_file_comparison_sees_one_byte(tmp_path):
    from benchmarks.pseudolabels import different_files, output_files

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        for name in output_files(d, [1]):
            (d / name).write_bytes(b"same bytes")
    assert different_files(a, b, [1]) == []
    name = output_files(a, [1])[0]
    (b / name).write_bytes(b"same bytez")
    assert different_files(a, b, [1]) == [name]
    (b / name).unlink()
    assert different_files(a, b, [1]) == [name]


def test_ddp_weight_comparison():
    from benchmarks.ddp_scaling import same_weights

    assert same_weights([1.0, 2.0], [1.0 + 1e-7, 2.0])
    assert not same_weights([1.0, 2.0], [1.01, 2.0]) and not same_weights([1.0], [1.0, 2.0])


def test_cli_prints_one_table_row_per_benchmark():
    """``python -m benchmarks --quick NAME``: the dated title and one row (the cheapest benchmark)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "metric"], cwd=ROOT,
                         capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# Benchmarks (") and "quick mode" in lines[0]
    assert lines[1] == "| benchmark | what | ratio | target | agreement | machine |"
    rows = [ln for ln in lines if ln.startswith("| metric |")]
    assert len(rows) == 1 and "| ok |" in rows[0]


def test_cli_rejects_an_unknown_benchmark():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "no_such_bench"], cwd=ROOT,
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert out.returncode == 2 and "no_such_bench" in out.stderr


def test_precision_loss_check_sees_five_percent():
    from benchmarks.train_step import LOSS_RTOL, losses_agree

    assert losses_agree([0.60], [0.60 * (1 + LOSS_RTOL / 2)])
    assert not losses_agree([0.60], [0.60 * (1 + 2 * LOSS_RTOL)])
    assert not losses_agree([0.60], [float("nan")]) and not losses_agree([0.6], [])


def test_extra_rows_reach_the_table():
    res = {"name": "train_step", "ratio": 1.0, "extra_rows": [{"name": "train_step.bf16", "ratio": 2.0}]}
    rows = all_rows(res)
    assert [r["name"] for r in rows] == ["train_step", "train_step.bf16"] and "extra_rows" not in rows[0]
