"""Superpixel pseudolabels over scans in parallel: ``--jobs 2`` against ``--jobs 1`` on the 20
real CHAOS scans (docs/method.md, 'Superpixel pseudolabels'), with the time per scan and the
agreement with the published files. Target: at least 1.7x on a 2-core machine.

The images are linked into a temporary folder, so the published files stay untouched. Without
the real scans (``$ALPNET_CHAOS_DIR``, see ``tests/realdata.py``) the benchmark runs on synthetic
CHAOS scans instead and says so. Quick mode: 2 scans, numbers not meaningful.

``python -m benchmarks.pseudolabels [--quick] [--jobs N]``
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data.cards import load_card
from data.pseudolabels import make_pseudolabels
from dataloaders.folds import scan_ids_in
from dataloaders.niftiio import read_zyx
from tests.realdata import chaos_dir, chaos_skip_reason

TARGET = 1.7
DATASET = "CHAOST2"
QUICK_SCANS = 2


def _inputs(work: Path, quick: bool) -> tuple[Path | None, str]:
    """Link (or synthesise) the images into ``work``; returns the published folder, if any."""
    card = load_card(DATASET)
    real_dir = chaos_dir()
    if real_dir is not None:
        ids = scan_ids_in(card, real_dir)[: QUICK_SCANS if quick else None]
        for sid in ids:
            name = card.file("image", id=sid)
            (work / name).symlink_to(real_dir / name)
        return real_dir, f"{len(ids)} real CHAOS scans"
    from data.chaos_mr import convert
    from data.synthetic import write_synthetic

    n = QUICK_SCANS if quick else 20
    write_synthetic("chaos", work / "raw", n, seed=0, size=256)
    convert(work / "raw", work, progress=False)
    return None, f"{n} synthetic CHAOS scans ({chaos_skip_reason()})"


def _agreement(work: Path, published: Path, ids: list[int]) -> tuple[float, int]:
    """Lowest per-scan superpixel agreement and the number of scans whose fgmask differs."""
    card = load_card(DATASET)
    worst, fg_diff = 1.0, 0
    for sid in ids:
        ours, _ = read_zyx(work / card.file("superpix", id=sid, scale="MIDDLE"))
        theirs, _ = read_zyx(published / card.file("superpix", id=sid, scale="MIDDLE"))
        worst = min(worst, float(np.mean(ours == theirs)))
        fo, _ = read_zyx(work / card.file("fgmask", id=sid))
        ft, _ = read_zyx(published / card.file("fgmask", id=sid))
        fg_diff += int(not np.array_equal(fo, ft))
    return worst, fg_diff


def run(quick: bool = False, jobs: int = 2) -> dict:
    """Time ``make_pseudolabels`` with ``jobs`` processes against one; return the result row."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_pseudo_") as tmp:
        work = Path(tmp)
        published, source = _inputs(work, quick)
        ids = scan_ids_in(load_card(DATASET), work)
        t0 = time.perf_counter()
        serial = make_pseudolabels(DATASET, work, jobs=1, overwrite=True, progress=False)
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        make_pseudolabels(DATASET, work, jobs=jobs, overwrite=True, progress=False)
        t_parallel = time.perf_counter() - t0
        per_scan = np.array(list(serial.scan_seconds.values()))
        details = (f"{source}: jobs=1 {t_serial:.1f} s, jobs={jobs} {t_parallel:.1f} s; per scan "
                   f"{per_scan.mean():.2f} s mean ({per_scan.min():.2f}-{per_scan.max():.2f})")
        if published is not None:
            worst, fg_diff = _agreement(work, published, ids)
            details += (f"; vs published: lowest superpixel agreement {100 * worst:.2f} %, "
                        f"fgmask differs in {fg_diff} scan(s)")
    details += (f"; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after on "
                f"{os.cpu_count()} cores (other work on the machine lowers the ratio)")
    return {"name": "pseudolabels", "what": f"superpixels, --jobs {jobs} vs --jobs 1",
            "ratio": t_serial / t_parallel, "target": f">= {TARGET}x", "details": details}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pseudolabels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 scans; numbers not meaningful")
    p.add_argument("--jobs", type=int, default=2, help="processes of the parallel run")
    args = p.parse_args(argv)
    row = run(quick=args.quick, jobs=args.jobs)
    print(f"pseudolabels: {row['ratio']:.2f}x (target {row['target']}); {row['details']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
