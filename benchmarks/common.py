"""What every benchmark shares: both paths run alternately on the same inputs, timed warm, their
outputs compared, and one result row.

A row (``dict``) has the keys ``name``, ``what``, ``ratio`` (baseline wall time over ours, a
float; the string ``"skipped"`` only when the real scans are absent), ``target``, ``agree``
(True/False: the two paths gave the same outputs; None when skipped), ``check`` (what was
compared) and ``details``.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import statistics
import time
from typing import Any, Callable

__all__ = ["Timings", "alternate", "row", "skipped_row", "load_note", "print_row", "exit_code",
           "REAL_DATA_ABSENT", "AGREEMENT", "all_rows", "real_chaos_dir", "real_data_reason", "free_port", "sync"]

REAL_DATA_ABSENT = "real CHAOS scans absent"   # the only reason a row may be skipped
AGREEMENT = {True: "ok", False: "FAILED", None: "not run"}   # a row's ``agree``, as printed


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the rendezvous of spawned DDP ranks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync(device: Any) -> None:
    """Wait for the queued GPU work of a ``torch.device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Timings:
    """Warm wall times (seconds) of the baseline and of ours, one per timed round."""
    baseline: list[float]
    ours: list[float]

    @property
    def ratio(self) -> float:
        """Median baseline time over median time of ours."""
        return statistics.median(self.baseline) / statistics.median(self.ours)

    def text(self) -> str:
        return (f"baseline {statistics.median(self.baseline):.2f} s, ours "
                f"{statistics.median(self.ours):.2f} s (medians of {len(self.ours)} warm round(s))")


def alternate(baseline: Callable[[], Any], ours: Callable[[], Any], rounds: int, *,
              warmup: int = 1) -> tuple[Timings, Any, Any]:
    """Run ``baseline, ours, baseline, ours, ...``: ``warmup`` untimed rounds, then ``rounds``
    timed ones. Returns the timings and the last output of each path (compare them)."""
    times_b, times_o = [], []
    out_b = out_o = None
    for i in range(warmup + max(int(rounds), 1)):
        start = time.perf_counter()
        out_b = baseline()
        t_b = time.perf_counter() - start
        start = time.perf_counter()
        out_o = ours()
        t_o = time.perf_counter() - start
        if i >= warmup:
            times_b.append(t_b)
            times_o.append(t_o)
    return Timings(times_b, times_o), out_b, out_o


def load_note() -> str:
    """The 1-minute load average and the core count (other work on the machine skews ratios)."""
    from util.machine import load_average

    load = load_average()
    return f"load average {'unknown' if load is None else f'{load:.1f}'} on {os.cpu_count()} cores"


def row(name: str, what: str, ratio: float, target: str, agree: bool, check: str, details: str) -> dict:
    return {"name": name, "what": what, "ratio": float(ratio), "target": target, "agree": bool(agree),
            "check": check, "details": f"{details}; {load_note()}"}


def skipped_row(name: str, what: str, target: str) -> dict:
    """The row of a real-data benchmark when the real scans are absent (the reason says why)."""
    return {"name": name, "what": what, "ratio": "skipped", "target": target, "agree": None,
            "check": "not run", "details": f"{REAL_DATA_ABSENT}: {real_data_reason()}"}


def all_rows(res: dict) -> list[dict]:
    """A benchmark's row followed by its ``extra_rows`` (further measurements of the same
    module, e.g. the precision rows of ``train_step``), each a complete row of its own."""
    main = {k: v for k, v in res.items() if k != "extra_rows"}
    return [main, *res.get("extra_rows", [])]


def print_row(res: dict) -> None:
    """One line for ``python -m benchmarks.<name>``."""
    ratio = res["ratio"]
    agree = AGREEMENT[res.get("agree")]
    print(f"{res['name']}: {ratio if isinstance(ratio, str) else f'{ratio:.2f}x'} "
          f"(target {res['target']}); agreement {agree} ({res.get('check', '')}); {res['details']}")


def exit_code(res: dict) -> int:
    """0 when the paths agreed (or the row was skipped for absent real data), else 1."""
    return 1 if res.get("agree") is False else 0


def real_chaos_dir():
    """The folder of the preprocessed real CHAOS MR scans (``$ALPNET_CHAOS_DIR``, see
    ``tests/realdata.py``), or None when they are not available."""
    from tests.realdata import chaos_dir

    return chaos_dir()


def real_data_reason() -> str:
    """Why the real scans are not available (for a skipped row)."""
    from tests.realdata import chaos_skip_reason

    return chaos_skip_reason()


def bench_main(module: str, doc: str, run: Callable[..., dict], argv: list[str] | None, *,
               quick_help: str, rounds_default: int, jobs: bool = False) -> int:
    """The command line every benchmark module shares: ``python -m benchmarks.<module>
    [--quick] [--rounds N]`` (``--jobs N`` where ``jobs``), one row printed, exit code 1 when
    its agreement check failed."""
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--rounds", type=int, default=None,
                   help=f"timed rounds of each path (default {rounds_default})")
    if jobs:
        p.add_argument("--jobs", type=int, default=2, help="processes of the parallel run")
    args = p.parse_args(argv)
    extra = {"jobs": args.jobs} if jobs else {}
    res = run(quick=args.quick, rounds=args.rounds, **extra)
    rows = all_rows(res)
    for r in rows:
        print_row(r)
    return max(exit_code(r) for r in rows)
