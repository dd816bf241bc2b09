"""Superpixel pseudolabels over scans in parallel: ``--jobs N`` (default 2) against ``--jobs 1``
on the 20 real CHAOS T2 scans, alternating in one process (jobs 1, jobs N, jobs 1, ...), each
into its own folder. Target: at least 1.7x with ``--jobs 2`` on 2 idle cores.

Checked (the run fails otherwise): the files written with ``--jobs N`` equal those of
``--jobs 1`` byte for byte; the body masks equal the published ``fgmask_<id>.nii.gz`` voxel for
voxel, and inside them the superpixels agree with the published ``superpix-MIDDLE_<id>.nii.gz``
on at least :data:`MIN_AGREEMENT_IN_BODY` of the voxels of every scan (docs/method.md,
'Superpixel pseudolabels'; outside the body both are 0 by construction, so an all-voxel figure
would hide differences). The time per scan of the ``--jobs 1`` run is printed.

The images are linked into temporary folders, so the published files stay untouched. Without
the real scans (``$ALPNET_CHAOS_DIR``, tests/realdata.py) the benchmark runs on synthetic CHAOS
scans instead, without the comparison with published files, and says so. Quick mode: 2 scans
(the test suite; numbers not meaningful).

``python -m benchmarks.pseudolabels [--quick] [--jobs N] [--rounds N]``
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import alternate, bench_main, real_chaos_dir, row
from data.cards import load_card, scan_ids_in
from data.pseudolabels import make_pseudolabels

TARGET = 1.7
DATASET = "CHAOST2"
SCALE = "MIDDLE"
QUICK_SCANS = 2
# lowest per-scan agreement with the published superpixels inside the body mask, measured on
# all 20 real CHAOS scans (docs/method.md, 'Superpixel pseudolabels'), rounded down
MIN_AGREEMENT_IN_BODY = 0.9976    # scan 1: 99.767 % (all voxels: 99.89 %)


def _link_images(src: Path, dst: Path, ids: list[int]) -> None:
    card = load_card(DATASET)
    dst.mkdir(parents=True, exist_ok=True)
    for sid in ids:
        name = card.file("image", id=sid)
        (dst / name).symlink_to(src / name)


def _inputs(work: Path, quick: bool) -> tuple[Path, Path | None, list[int], str]:
    """The folder of the images, the published folder (None: synthetic), the ids, a description."""
    card = load_card(DATASET)
    real = real_chaos_dir()
    if real is not None:
        ids = scan_ids_in(card, real)[: QUICK_SCANS if quick else None]
        return real, real, ids, f"{len(ids)} real CHAOS scans"
    from data.chaos_mr import convert
    from data.synthetic import write_synthetic

    n = QUICK_SCANS if quick else 20
    write_synthetic("chaos", work / "raw", n, seed=0, size=256)
    convert(work / "raw", work / "converted", progress=False)
    return (work / "converted", None, scan_ids_in(card, work / "converted"),
            f"{n} synthetic CHAOS scans (real scans absent)")


def output_files(folder: Path, ids: list[int]) -> list[str]:
    card = load_card(DATASET)
    return [card.file(k, id=sid, scale=SCALE) for sid in ids for k in ("superpix", "fgmask")]


def different_files(a: Path, b: Path, ids: list[int]) -> list[str]:
    """Output files of ``ids`` that differ byte for byte between folders ``a`` and ``b``."""
    return [name for name in output_files(a, ids)
            if not (a / name).is_file() or not (b / name).is_file()
            or (a / name).read_bytes() != (b / name).read_bytes()]


def agreement_in_body(work: Path, published: Path, ids: list[int]) -> tuple[dict[int, float], list[int]]:
    """Per scan, the share of the published body mask's voxels whose superpixel id equals the
    published one; and the scans whose body mask differs from the published one."""
    from util.io import read_zyx

    card = load_card(DATASET)
    agree, fg_diff = {}, []
    for sid in ids:
        fo, _ = read_zyx(work / card.file("fgmask", id=sid))
        ft, _ = read_zyx(published / card.file("fgmask", id=sid))
        if not np.array_equal(fo, ft):
            fg_diff.append(sid)
        ours, _ = read_zyx(work / card.file("superpix", id=sid, scale=SCALE))
        theirs, _ = read_zyx(published / card.file("superpix", id=sid, scale=SCALE))
        body = ft > 0
        agree[sid] = float(np.mean(ours[body] == theirs[body]))
    return agree, fg_diff


def run(quick: bool = False, jobs: int = 2, rounds: int | None = None) -> dict:
    """Time ``make_pseudolabels`` with ``jobs`` processes against one; return the result row."""
    with tempfile.TemporaryDirectory(prefix="bench_pseudo_") as tmp:
        tmp = Path(tmp)
        src, published, ids, source = _inputs(tmp, quick)
        serial_dir, parallel_dir = tmp / "jobs1", tmp / f"jobs{jobs}"
        for folder in (serial_dir, parallel_dir):
            _link_images(src, folder, ids)
            # warm-up (untimed): imports and the file cache, on one scan
            make_pseudolabels(DATASET, folder, SCALE, jobs=1, overwrite=True, progress=False,
                              scan_ids=ids[:1])
        summaries = []

        def serial():
            summaries.append(make_pseudolabels(DATASET, serial_dir, SCALE, jobs=1, overwrite=True,
                                               progress=False))

        def parallel():
            make_pseudolabels(DATASET, parallel_dir, SCALE, jobs=jobs, overwrite=True, progress=False)

        timings, _, _ = alternate(serial, parallel, rounds or 1, warmup=0)
        differ = different_files(serial_dir, parallel_dir, ids)
        per_scan = np.array(list(summaries[-1].scan_seconds.values()))
        checks = [f"--jobs {jobs} files byte-identical to --jobs 1"]
        details = (f"{source}: {timings.text()}; per scan (--jobs 1) {per_scan.mean():.2f} s mean "
                   f"({per_scan.min():.2f}-{per_scan.max():.2f})")
        agree = not differ
        if differ:
            checks.append(f"differ: {', '.join(differ[:4])}")
        if published is not None:
            body, fg_diff = agreement_in_body(parallel_dir, published, ids)
            worst = min(body, key=body.get)
            low = [sid for sid, a in body.items() if a < MIN_AGREEMENT_IN_BODY]
            agree = agree and not fg_diff and not low
            checks.append(f"body masks equal the published ones{f' (not scans {fg_diff})' if fg_diff else ''}; "
                          f"superpixels inside them >= {100 * MIN_AGREEMENT_IN_BODY:.2f} % equal"
                          f"{f' (not scans {low})' if low else ''}")
            details += f"; lowest agreement inside the body {100 * body[worst]:.3f} % (scan {worst})"
    return row("pseudolabels", f"superpixels, --jobs {jobs} vs --jobs 1", timings.ratio,
               f">= {TARGET}x on 2 idle cores", agree, "; ".join(checks), details)


def main(argv: list[str] | None = None) -> int:
    return bench_main("pseudolabels", __doc__, run, argv,
                      quick_help="2 scans; numbers not meaningful", rounds_default=1, jobs=True)


if __name__ == "__main__":
    sys.exit(main())
