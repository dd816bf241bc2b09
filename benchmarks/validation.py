"""Validation inference: the batched support-once path against the original one-slice-at-a-time
path, both through the entry validation runs (``util.validation.evaluate_snapshot``, switched by
``EvalOptions.one_slice_at_a_time``), alternating in one process on the same scans and network.

Fold 0 of the real CHAOS T2 scans holds 5 scans: 4 queries and 1 support (scan 8); test organs
of label set 0 (the kidneys). Full mode: all 4 queries, every slice, the conformance fixture
network (ResNet-101, tuned localconv) of ``tests/refnet.py``. Quick mode (the test suite): the
tiny synthetic scans of ``tests/tinydata.py`` (no real data needed), one query cut to 4 slices
across its first organ, a ResNet-18 with random weights.

Both paths must give the same predictions and the same Dice, precision, recall, HD95 and ASSD
(the run fails otherwise). Ratio: wall time of the one-slice-at-a-time path over the batched
one, warm (an untimed round on a small cut first). Target: at least 2x.

Precision row (``validation.bf16``): the batched path in fp32 against the same in bf16 autocast,
alternating, on the same scans and network. Agreement: every organ's mean Dice within
``DICE_TOL`` (0.01) of fp32's. Target on a CPU with native bf16: at least 1.5x.

``python -m benchmarks.validation [--quick] [--rounds N]``
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from benchmarks.common import alternate, bench_main, row, skipped_row

if TYPE_CHECKING:
    from dataloaders.validation_set import ValidationSet
    from util.validation import SnapshotResult

TARGET = 2.0
BF16_TARGET = 1.5        # bf16 validation at least 1.5x fp32 on a CPU with native bf16
DICE_TOL = 0.01          # organ mean Dice of bf16 within 0.01 of fp32's
NAME = "validation"
QUICK_SLICES = 4
TABLES = ("counts", "valid", "dice", "precision", "recall", "hd95", "assd")


def _model(quick: bool) -> torch.nn.Module:
    from models.grid_proto_fewshot import FewShotSeg

    torch.manual_seed(0)
    if quick:
        return FewShotSeg(cfg={"which_model": "dlfcn_res18", "init_weights": "random"}).eval()
    from tests.refnet import fixture_state_dict

    model = FewShotSeg(cfg={"which_model": "dlfcn_res101", "init_weights": "random"})
    model.load_state_dict(fixture_state_dict(tuned_localconv=True))
    return model.eval()


def _cut(vset: "ValidationSet", n_queries: int, n_slices: int) -> "ValidationSet":
    """The validation set with its first ``n_queries`` queries, each cut to ``n_slices`` slices
    centred on its first test organ."""
    from util.validation.protocol import organ_z_range

    queries = []
    for scan in vset.queries[:n_queries]:
        z0, z1 = organ_z_range(scan.label, vset.labels[0])
        lo = max(0, (z0 + z1) // 2 - n_slices // 2)
        keep = slice(lo, lo + n_slices)
        queries.append(dataclasses.replace(scan, image=scan.image[..., keep], label=scan.label[..., keep]))
    return dataclasses.replace(vset, queries=queries, query_ids=[q.scan_id for q in queries])


def compare(a: "SnapshotResult", b: "SnapshotResult") -> list[str]:
    """What differs between two ``util.validation.SnapshotResult``: the names of the tables that
    differ (NaN equals NaN) and, per differing prediction volume, its key and pixel count."""
    diffs = [k for k in TABLES if not np.array_equal(getattr(a, k), getattr(b, k), equal_nan=True)]
    if a.preds.keys() != b.preds.keys():
        diffs.append("prediction keys")
    else:
        diffs += [f"prediction {k}: {int((a.preds[k] != b.preds[k]).sum())} px"
                  for k in a.preds if not np.array_equal(a.preds[k], b.preds[k])]
    return diffs


def _fold(quick: bool) -> "ValidationSet":
    """Fold 0, label set 0 (kidneys): the tiny synthetic scans in quick mode, else the real ones
    (None when they are absent)."""
    from benchmarks.common import real_chaos_dir
    from data.cards import load_card
    from dataloaders.validation_set import load_validation_set

    card = load_card("CHAOST2")
    if quick:
        import tempfile

        from tests.tinydata import build_tiny_dataset

        with tempfile.TemporaryDirectory(prefix="bench_val_") as tmp:    # read into memory, then removed
            tiny = build_tiny_dataset(Path(tmp) / "chaos", "CHAOST2", hw=64, depth=8, block=16)
            return load_validation_set(card, tiny.data_dir, fold=0, label_sets=0)
    data = real_chaos_dir()
    return None if data is None else load_validation_set(card, data, fold=0, label_sets=0)


def organ_dice_gap(a: "SnapshotResult", b: "SnapshotResult") -> float:
    """The largest difference of an organ's mean Dice between two results."""
    return float(np.nanmax(np.abs(a.summary(a.dice)[0] - b.summary(b.dice)[0])))


def _bf16_row(model, vset, rounds: int, scans: str) -> dict:
    from util.backends import cpu_native_bf16
    from util.validation import EvalOptions, evaluate_snapshot

    device = torch.device("cpu")
    fp32, bf16 = EvalOptions(), EvalOptions(precision="bf16")
    timings, a, b = alternate(lambda: evaluate_snapshot(model, vset, fp32, device=device),
                              lambda: evaluate_snapshot(model, vset, bf16, device=device), rounds, warmup=1)
    gap = organ_dice_gap(a, b)
    native = "native bf16" if cpu_native_bf16() else "NO native bf16 (emulated)"
    return row(f"{NAME}.bf16", "fold-0 kidney validation, bf16 vs fp32 (batched)", timings.ratio,
               f">= {BF16_TARGET:g}x on a CPU with native bf16", gap <= DICE_TOL,
               f"organ mean Dice within {DICE_TOL}: largest gap {gap:.4f} (fp32 "
               f"{np.round(a.summary(a.dice)[0], 4).tolist()}, bf16 {np.round(b.summary(b.dice)[0], 4).tolist()})",
               f"{scans}; {timings.text()}; {native}")


def run(quick: bool = False, rounds: int | None = None) -> dict:
    from util.validation import EvalOptions, evaluate_snapshot

    what = "fold-0 kidney validation, one slice at a time vs support once"
    target = f">= {TARGET:g}x"
    vset = _fold(quick)
    if vset is None:
        return skipped_row(NAME, what, target)
    n_all = len(vset.queries)
    if quick:
        vset = _cut(vset, 1, QUICK_SLICES)
    model = _model(quick)
    device = torch.device("cpu")
    ours_opts = EvalOptions()
    base_opts = dataclasses.replace(ours_opts, one_slice_at_a_time=True)
    warm_set = _cut(vset, 1, 2)
    for opts in (base_opts, ours_opts):                                   # untimed warm-up
        evaluate_snapshot(model, warm_set, opts, device=device)
    timings, old, new = alternate(lambda: evaluate_snapshot(model, vset, base_opts, device=device),
                                  lambda: evaluate_snapshot(model, vset, ours_opts, device=device),
                                  rounds or 1, warmup=0)
    diffs = compare(old, new)
    n_slices = sum(q.n_slices for q in vset.queries)
    scans = (f"1 of the {n_all} synthetic query scans, {QUICK_SLICES} slices" if quick else
             f"{n_all} query scans + 1 support (fold 0 = 5 scans), {n_slices} query slices")
    model_s = "ResNet-18, random weights" if quick else "fixture ResNet-101, tuned localconv"
    mean_dice = np.nanmean(new.dice)
    out = row(NAME, what, timings.ratio, target, not diffs,
              "predictions, Dice, precision, recall, HD95, ASSD identical"
              + ("" if not diffs else f" - differ: {', '.join(diffs[:5])}"),
              f"{scans}, labels {vset.labels}, {model_s}; {timings.text()}; mean Dice {mean_dice:.4f}")
    out["extra_rows"] = [_bf16_row(model, vset, rounds or 1, f"{scans}, {model_s}")]
    return out


def main(argv: list[str] | None = None) -> int:
    return bench_main("validation", __doc__.split("\n\n")[0], run, argv,
                      quick_help="one query scan cut to 4 slices, ResNet-18", rounds_default=1)


if __name__ == "__main__":
    sys.exit(main())
