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

``python -m benchmarks.segment [--quick]``; ``--dice`` instead measures the label-free rules
against the protocol on the real CHAOS scans (fold 0, kidneys, the fixture network with tuned
localconv; about 280 ResNet-101 passes, 6-7 minutes on 2 cores): the table of docs/segment.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks.common import alternate, exit_code, print_row, row

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


def _mask_arrays(report) -> list[np.ndarray]:
    """The written masks of a segment report, as arrays (with their origin and spacing)."""
    out = []
    for r in report.results:
        img = sitk.ReadImage(str(r.mask))
        out.append((sitk.GetArrayFromImage(img), img.GetOrigin(), img.GetSpacing(), img.GetDirection()))
    return out


def _same(a: list, b: list) -> bool:
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
               f"included), {n} query slices, {rep.support_encoded} parts; {timings.text()}; "
               f"{timings.ours[-1] / n:.3f} s per slice ours; {voxels} mask voxels")


def dice_table(real_dir: Path | None = None, batch_size: int = 8) -> dict:
    """Label-free rules vs the protocol on real CHAOS (fold 0: queries 1, 2, 3, 5, support 8;
    kidneys), the fixture network with tuned localconv.

    Returns per (scan, organ): the protocol's Dice on the counted slices (= validation's; the
    reference value beside it) and each rule's Dice on the whole volume and on the counted slices.
    """
    from data.cards import load_card
    from dataloaders.scans import load_scan
    from tests.realdata import chaos_dir, chaos_skip_reason
    from tests.refnet import REFERENCE, fixture_state_dict
    from util.evaluate import build_model
    from util.protocol import SupportScan, build_support, organ_z_range
    from util.segment.rule import RULES, label_free_mask, masks_by_part, predict_every_part

    real_dir = Path(real_dir) if real_dir else chaos_dir()
    if real_dir is None:
        raise FileNotFoundError(chaos_skip_reason())
    card = load_card("CHAOST2")
    model = build_model({"model": {"which_model": "dlfcn_res101"}}, torch.device("cpu"))
    model.load_state_dict(fixture_state_dict(tuned_localconv=True))
    model.eval()
    ref = json.loads((REFERENCE / "validation" / "chaos_fold0_kidneys.json").read_text(encoding="utf-8"))
    raw_ref = ref["metrics"]["mar_val_batches_rawDice"]
    sup = load_scan(card, real_dir, 8, label=True)

    def dice(pred: np.ndarray, gt: np.ndarray) -> float:
        return float(2 * np.count_nonzero(pred & gt) / (np.count_nonzero(pred) + np.count_nonzero(gt)))

    rows = []
    for organ in (2, 3):
        support = build_support(model, [SupportScan(8, sup.image, sup.label)], organ, 3)
        for qi, sid in enumerate((1, 2, 3, 5)):
            scan = load_scan(card, real_dir, sid, label=True)
            per_part = predict_every_part(model, support, scan.image, batch_size=batch_size)
            gt = np.moveaxis(scan.label == organ, -1, 0)
            z0, z1 = organ_z_range(scan.label, organ)
            counted = slice(z0, z1 + 1)
            row = {"scan": sid, "organ": organ, "reference": raw_ref[qi][organ - 2],
                   "protocol": dice(masks_by_part(per_part, z0, z1)[counted] > 0, gt[counted])}
            for rule in RULES:
                mask, extent = label_free_mask(per_part, rule)
                row[rule] = {"whole": dice(mask > 0, gt), "counted": dice(mask[counted] > 0, gt[counted]),
                             "extent": extent, "truth_extent": (z0, z1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--dice"]:   # Dice of the label-free rules vs the protocol: its own options
        from benchmarks import segment_dice

        return segment_dice.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.segment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode (numbers meaningless)")
    parser.add_argument("--dice", action="store_true", help="label-free rules vs protocol on real CHAOS")
    args = parser.parse_args(argv)
    if args.dice:
        print(json.dumps(dice_table(), indent=1))
        return 0
    res = run(quick=args.quick)
    print_row(res)
    return exit_code(res)


if __name__ == "__main__":
    sys.exit(main())
