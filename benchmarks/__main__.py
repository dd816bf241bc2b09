"""``python -m benchmarks [--quick] [NAME ...]``: run every benchmark and print one table.

Each benchmark runs the original way and ours on the same inputs, alternating in one process,
times both warm and compares their outputs. Each module of this package exposes
``run(quick: bool = False) -> dict`` returning a row (``benchmarks.common``): ``name``, ``what``,
``ratio`` (wall time of the original way over ours), ``target``, ``agree`` (the outputs were
the same), ``check`` (what was compared) and ``details``. The table shows each row's agreement
check (ok / FAILED); the command exits with 1 when any check failed. Quick mode (the test suite)
runs small inputs: the checks hold, the ratios mean little. Rows that need the real CHAOS scans
say "skipped" with the reason when ``$ALPNET_CHAOS_DIR`` does not name them.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import AGREEMENT, all_rows, load_note

BENCHMARKS = ("pseudolabels", "metric", "validation", "train_step", "segment", "ddp_scaling")
REAL_DATA_BENCHMARKS = ("validation",)      # rows skipped (with the reason) without the real scans


def machine() -> str:
    """A short description of this machine (CPU cores, GPU if any)."""
    import os

    desc = f"{platform.machine()} {os.cpu_count()} cores"
    if torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return desc


def collect(names: list[str], quick: bool) -> list[dict]:
    rows = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.perf_counter()
        result = module.run(quick=quick)
        result.setdefault("name", name)
        result["seconds"] = time.perf_counter() - start
        rows.extend(all_rows(result))
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table: what, ratio, target, agreement check, machine."""
    lines = ["| benchmark | what | ratio | target | agreement | machine |", "|---|---|---|---|---|---|"]
    host = machine()
    for r in rows:
        ratio = r.get("ratio")
        ratio_s = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else str(ratio)
        lines.append(f"| {r['name']} | {r.get('what', '')} | {ratio_s} | {r.get('target', '')} | "
                     f"{AGREEMENT[r.get('agree')]} | {host} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny inputs, numbers not meaningful")
    args = parser.parse_args(argv)
    names = args.names or [n for n in BENCHMARKS if (Path(__file__).parent / f"{n}.py").exists()]
    unknown = [n for n in names if not (Path(__file__).parent / f"{n}.py").exists()]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    load = load_note()
    rows = collect(names, args.quick)
    print(f"# Benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, {machine()}, {load} at the start"
          f"{', quick mode' if args.quick else ''})")
    print(table(rows))
    for r in rows:
        print(f"\n{r['name']}: agreement {AGREEMENT[r.get('agree')]} ({r.get('check', '')}); {r.get('details', '')}")
    failed = [r["name"] for r in rows if r.get("agree") is False]
    if failed:
        print(f"\nFAILED agreement check: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
