"""``segment.py`` speed: the original inference (one ``forward`` per query slice and support
part, the support images encoded again each time; ``segment(..., one_at_a_time=True)``) against
``segment.py``'s (the support encoded once per call, each query slice once in batches, the
prototype head run once per part), alternating in one process on the same scans and network,
with the default label-free rule. The written masks must be identical (also with
``--z-range``), or the run fails. Ratio: wall time of the original way over ours, warm (a
``--z-range`` call of both first). Target: at least 2x.

Full mode: the CHAOST2 card (256 x 256 slices), ResNet-101 with random weights, one support and
two query scans rendered in raw geometry (preprocessing included in the time). Quick mode: a
64 x 64 card and ResNet-18 (the test suite; numbers not meaningful).

With the default ``support`` rule the support scan's own slices are predicted too (its
calibration), by the same path as the queries.

``python -m benchmarks.segment [--quick] [--rounds N]``; ``python -m benchmarks.segment --dice
CHECKPOINT ...`` instead measures the label-free rules' Dice against the protocol on the real
CHAOS scans (``benchmarks/segment_dice.py``): the table of docs/segment.md.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks.common import alternate, bench_main, row

if TYPE_CHECKING:
    from util.segment import SegmentReport

TARGET = 2.0
QUICK_CARD = """{
  name: "SEGBENCH", modality: "MR", labels: ["BG", "ORGAN"], fold_separators: null,
  label_groups: { pa_all: [1], groups: [[]] }, normalisation: "per_volume_zscore",
  body_mask_threshold: 10.0001, superpixel: { MIDDLE: { scale: 1.0, sigma: 1.0, min_size: 400 } },
  files: { image: "image_{id}.nii.gz", label: "label_{id}.nii.gz",
           superpix: "superpix-{scale}_{id}.nii.gz", fgmask: "fgmask_{id}.nii.gz",
           classmap: "classmap_{min_tp}.json" },
  data_dir: "./unused/",
  preprocessing: { recipe: "mr", orientation: "LAS", clip_percentile: 99.5,
                   spacing: [3.0, 3.0, 6.0], size_xy: [64, 64] },
}"""


@contextlib.contextmanager
def _card_dir(folder: Path) -> Iterator[None]:
    old = os.environ.get("SSL_ALPNET_CARDS")
    os.environ["SSL_ALPNET_CARDS"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SSL_ALPNET_CARDS", None)
        else:
            os.environ["SSL_ALPNET_CARDS"] = old


def _phantom(folder: Path, name: str, seed: int, size: tuple[int, int, int],
             spacing: tuple[float, float, float]) -> tuple[Path, Path]:
    """An abdomen-like body with one organ (label 1) on a tilted grid; image and label files."""
    from data.phantom import Blob, Grid, Tissue, grid_image, render, rotation

    rng = np.random.default_rng(seed)
    direction = rotation(*rng.uniform(-0.15, 0.15, 3))
    origin = -direction @ (np.array(size) * np.array(spacing) / 2)
    grid = Grid(size, spacing, tuple(origin), direction)
    blobs = [Blob((0, 0, 0), (150, 110, 400), 1), Blob((-40, 0, 0), (70, 60, 80), 2),
             Blob(tuple(rng.normal((50, 40, 0), 5)), (30, 35, 55), 3, 1)]
    image, label = render(grid, blobs, [Tissue(0, 0), Tissue(150, 10), Tissue(260, 15), Tissue(420, 20)],
                          rng, noise_sd=8, rician=True)
    img_path, lab_path = folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz"
    sitk.WriteImage(grid_image(grid, image.astype(np.float32)), str(img_path))
    sitk.WriteImage(grid_image(grid, label), str(lab_path))
    return img_path, lab_path


def _mask_arrays(report: "SegmentReport") -> list[tuple]:
    """The written masks of a segment report: (Z x Y x X array, origin, spacing, direction) each."""
    out = []
    for r in report.results:
        img = sitk.ReadImage(str(r.mask))
        out.append((sitk.GetArrayFromImage(img), img.GetOrigin(), img.GetSpacing(), img.GetDirection()))
    return out


def _same(a: list[tuple], b: list[tuple]) -> bool:
    """Same masks voxel for voxel, in the same geometry."""
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b))


def run(quick: bool = False, rounds: int | None = None) -> dict:
    """Time ``segment`` with the support re-encoded per part and slice against encoded once."""
    from models.grid_proto_fewshot import FewShotSeg
    from util.segment import SegmentRequest, build_segmenter, inspect_checkpoint, segment

    modelname = "dlfcn_res18" if quick else "dlfcn_res101"
    size = (80, 80, 12) if quick else (320, 320, 40)
    spacing = (2.0, 2.0, 6.0) if quick else (1.3, 1.3, 6.0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "SEGBENCH.json5").write_text(QUICK_CARD, encoding="utf-8")
        with _card_dir(tmp):
            torch.manual_seed(0)
            net = FewShotSeg(cfg={"which_model": modelname, "init_weights": "random"})
            torch.save(net.state_dict(), tmp / "ckpt.pth")
            sup = _phantom(tmp, "support", 0, size, spacing)
            queries = tuple(_phantom(tmp, f"query{i}", i, size, spacing)[0] for i in (1, 2))
            model = build_segmenter(inspect_checkpoint(tmp / "ckpt.pth"), "cpu")

            def call(one_at_a_time: bool, z_range=None, qs=queries, out="out"):
                rep = segment(SegmentRequest(
                    checkpoint=tmp / "ckpt.pth", support_image=sup[0], support_label=sup[1], label=1,
                    queries=qs, out=tmp / f"{out}_{int(one_at_a_time)}", dataset="SEGBENCH" if quick else "CHAOST2",
                    z_range=z_range, overlay_slices=0), model=model, progress=False,
                    one_at_a_time=one_at_a_time)
                return rep, _mask_arrays(rep)

            z_range = (3, 8) if quick else (10, 20)
            _, zr_old = call(True, z_range, queries[:1], "zrange")      # also the warm-up
            _, zr_new = call(False, z_range, queries[:1], "zrange")
            timings, (rep_old, old), (rep, new) = alternate(lambda: call(True), lambda: call(False),
                                                            rounds or 1, warmup=0)
    agree = _same(old, new) and _same(zr_old, zr_new)
    voxels = sum(int(m[0].astype(bool).sum()) for m in new)
    n = rep.query_encoded
    return row("segment", f"segment.py label-free, support re-encoded per part and slice vs once ({modelname})",
               timings.ratio, f">= {TARGET:g}x", agree,
               "written masks (voxels and geometry) identical, label-free and --z-range",
               f"{len(queries)} phantom queries {size[0]}x{size[1]}x{size[2]} (raw geometry, preprocessing "
               f"included), {n} query slices, {len(rep.support_slices)} parts, {rep.support_encoded} support slices "
               f"encoded (parts + calibration); {timings.text()}; "
               f"{timings.ours[-1] / n:.3f} s per slice ours; {voxels} mask voxels")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--dice"]:   # Dice of the label-free rules vs the protocol: its own options
        from benchmarks import segment_dice

        return segment_dice.main(argv[1:])
    return bench_main("segment", __doc__.split("\n\n")[0], run, argv,
                      quick_help="smoke mode (numbers meaningless)", rounds_default=1)


if __name__ == "__main__":
    sys.exit(main())
