"""Every benchmark still runs (quick mode) and returns its row: the keys the table of
``python -m benchmarks`` reads. What is asserted is that it ran, never a speed (COMMON rules).

Each benchmark runs in its own Python process, as a user runs ``python -m benchmarks.<name>``:
some fork worker processes, which must not inherit the state of the test process (seen here:
``ddp_scaling``'s forked ranks never finished when run inside pytest after the others)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import BENCHMARKS, table

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = ("name", "what", "ratio", "target", "details")


def _present(name: str) -> bool:
    return (ROOT / "benchmarks" / f"{name}.py").is_file()


def check_row(name: str, row: dict) -> None:
    """A row as the table prints it: its own name, a description, a target, and a ratio that is
    a positive finite number (or the string 'skipped' when its input data is absent)."""
    missing = [k for k in ROW_KEYS if k not in row]
    assert not missing, f"benchmark {name}: row lacks {missing}"
    assert row["name"] == name
    assert isinstance(row["what"], str) and row["what"]
    assert isinstance(row["target"], str) and row["target"]
    ratio = row["ratio"]
    if isinstance(ratio, str):
        assert ratio == "skipped", f"benchmark {name}: ratio {ratio!r}"
        assert row["details"], "a skipped benchmark says why"
    else:
        assert isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0, ratio


@pytest.mark.slow
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_mode_returns_its_row(name):
    if not _present(name):
        pytest.skip(f"benchmarks/{name}.py not written yet")
    code = ("import json, sys; from benchmarks import {0} as m; "
            "sys.stdout.write('ROW ' + json.dumps(m.run(quick=True), default=str))").format(name)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, encoding="utf-8",
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.rsplit("ROW ", 1)[1])
    check_row(name, row)
    # the table renders it on one line with the machine column
    line = table([row]).splitlines()[-1]
    assert line.startswith(f"| {name} | ") and line.count("|") == 6


def test_check_row_rejects_broken_rows():
    """The row check can fail: a missing key, a foreign name, a NaN or negative ratio."""
    good = {"name": "x", "what": "w", "ratio": 2.0, "target": ">= 1x", "details": ""}
    check_row("x", good)
    for bad in ({k: v for k, v in good.items() if k != "target"}, {**good, "name": "y"},
                {**good, "ratio": math.nan}, {**good, "ratio": -1.0}, {**good, "ratio": "fast"},
                {**good, "ratio": "skipped"}):
        with pytest.raises(AssertionError):
            check_row("x", bad)


def test_cli_prints_one_table_row_per_benchmark():
    """``python -m benchmarks --quick NAME``: the dated title and one row (the cheapest benchmark)."""
    if not _present("metric"):
        pytest.skip("benchmarks/metric.py not written yet")
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "metric"], cwd=ROOT,
                         capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# Benchmarks (") and "quick mode" in lines[0]
    assert lines[1] == "| benchmark | what | ratio | target | machine |"
    rows = [ln for ln in lines if ln.startswith("| metric |")]
    assert len(rows) == 1


def test_cli_rejects_an_unknown_benchmark():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "no_such_bench"], cwd=ROOT,
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert out.returncode == 2 and "no_such_bench" in out.stderr
