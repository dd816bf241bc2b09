"""Dice of ``segment.py``'s label-free rules against the protocol on the real CHAOS scans.

``python -m benchmarks.segment --dice CHECKPOINT [--data-dir DIR] [--organs C ...] [--cache DIR]
[--json FILE]``

The checkpoint's own config says what is measured (the configuration travels as data, never
parsed from a file name): the fold (``eval_fold``: its validation scans, the last one as
support, as ``support_idx = [-1]`` chooses) and the organs tested in its setting
(``label_sets``). Every scan is read and normalised as ``segment.py --preprocessed`` reads it;
each slice is encoded once and scored by every part of each organ's support
(:func:`util.segment.rule.margins_every_part`), the support scan's own slices too (the
calibration of the ``support`` rule). Per query and organ:

- ``protocol``: the mask of ``segment.py --z-range`` with the ground-truth range (= validation);
- each rule of :data:`util.segment.rule.RULES`: whole-volume Dice, and Dice on the organ's true
  slices (the slices the protocol scores), with the extent it chose.

``--cache DIR`` keeps the network's outputs (float16 margins, their sign kept exactly) per
checkpoint, organ and scan, so rules can be compared again without running the network.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

CARD = "CHAOST2"
SMALLEST_F16 = np.float16(6e-8)   # a positive float16 (subnormal): keeps the sign of tiny margins
F16_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass(frozen=True)
class FoldPlan:
    """What a checkpoint is measured on: query and support scan ids and the organs tested."""
    fold: int
    label_sets: int
    queries: tuple[int, ...]
    support: int
    organs: tuple[int, ...]


def fold_plan(config: dict, card, data_dir: Path, organs: Sequence[int] | None = None) -> FoldPlan:
    """The fold, queries, support and organs of a run's ``config`` (the fold's validation scans,
    the last one as support); ``organs`` replaces the organs tested in its setting."""
    from data.cards import scan_ids_in
    from dataloaders.folds import check_label_list, split_fold, test_labels

    fold, label_sets = int(config.get("eval_fold", 0)), int(config.get("label_sets", 0))
    val, _ = split_fold(card, scan_ids_in(card, data_dir), fold)
    chosen = test_labels(card, label_sets) if not organs else check_label_list(card, organs, "--organs")
    return FoldPlan(fold, label_sets, tuple(val[:-1]), val[-1], tuple(chosen))


def _key(checkpoint: Path) -> str:
    stat = checkpoint.stat()
    text = f"{checkpoint.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _to_f16(margins: np.ndarray) -> np.ndarray:
    """float16 copy of ``margins`` whose ``> 0`` equals the original's."""
    out = np.clip(margins, -F16_MAX, F16_MAX).astype(np.float16)
    out[(margins > 0) & ~(out > 0)] = SMALLEST_F16
    return out


class MarginCache:
    """Network outputs per (organ, scan): ``<dir>/<checkpoint key>/label<C>_scan<id>.npz``."""

    def __init__(self, folder: Path | None, checkpoint: Path) -> None:
        self.folder = None if folder is None else Path(folder) / _key(checkpoint)

    def path(self, organ: int, scan: int) -> Path | None:
        return None if self.folder is None else self.folder / f"label{organ}_scan{scan}.npz"

    def get(self, organ: int, scan: int) -> np.ndarray | None:
        path = self.path(organ, scan)
        if path is None or not path.is_file():
            return None
        with np.load(path) as data:
            return data["margins"].astype(np.float32)

    def put(self, organ: int, scan: int, margins: np.ndarray) -> None:
        from util.io import atomic_path

        path = self.path(organ, scan)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, margins=_to_f16(margins))


def network_margins(checkpoint: Path, data_dir: Path, plan: FoldPlan, cache: MarginCache, *,
                    batch_size: int = 8, device: str = "cpu") -> tuple[dict, dict, dict]:
    """Margins (npart x Z x H x W) of every scan of ``plan`` (support included) for every organ,
    the scans' labels (Z x H x W int16) and normalised images (Z x H x W, the network's input),
    read as ``segment.py --preprocessed`` reads them.

    Returns:
        ``({(organ, scan): margins}, {scan: label_zhw}, {scan: image_zhw})``.
    """
    import SimpleITK as sitk

    from data.cards import load_card
    from dataloaders.scans import CUT_HW
    from util.io import read_image
    from util.segment import build_segmenter, inspect_checkpoint
    from util.segment.rule import margins_every_part
    from util.segment.volumes import normalise_prepared, prepare_query, prepare_support
    from util.validation.protocol import SupportScan, build_support

    card = load_card(CARD)
    scans = (plan.support,) + plan.queries
    labels, images, label_images = {}, {}, {}
    for sid in scans:
        label_images[sid] = read_image(data_dir / card.file("label", id=sid))
        lab = sitk.GetArrayFromImage(label_images[sid])
        labels[sid] = lab[:, : CUT_HW[0], : CUT_HW[1]]                      # Z x H x W
        images[sid] = read_image(data_dir / card.file("image", id=sid))
    out: dict = {}
    prepared = {}
    for sid in scans:
        prepared[sid] = prepare_query(images[sid], card, preprocessed=True, name=f"scan{sid}")
        normalise_prepared(prepared[sid], card, None)
    normalised = {sid: np.moveaxis(scan.image, -1, 0) for sid, scan in prepared.items()}
    missing = [sid for sid in scans if any(cache.get(o, sid) is None for o in plan.organs)]
    for sid in scans:
        if sid not in missing:
            out.update({(o, sid): cache.get(o, sid) for o in plan.organs})
    if not missing:
        return out, labels, normalised
    info = inspect_checkpoint(checkpoint)
    model = build_segmenter(info, device)
    supports = []
    for organ in plan.organs:
        sup = prepare_support(images[plan.support], label_images[plan.support], organ, card,
                              preprocessed=True, name=f"scan{plan.support}")
        normalise_prepared(sup, card, None)
        supports.append(build_support(model, [SupportScan(sup.name, sup.image, sup.label)], 1,
                                      info.npart, device=device))
    for sid in missing:
        start = time.perf_counter()
        scan = prepared[sid]
        margins = margins_every_part(model, supports, scan.image, batch_size=batch_size,
                                     device=device, val_wsize=info.val_wsize)
        for organ, m in zip(plan.organs, margins):
            cache.put(organ, sid, m)
            out[(organ, sid)] = m
        log.info("scan %d: %d slices in %.1f s", sid, scan.n_slices, time.perf_counter() - start)
    return out, labels, normalised


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2 |P & T| / (|P| + |T|) of two boolean arrays (1.0 when both are empty)."""
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 1.0 if total == 0 else float(2 * np.count_nonzero(pred & truth) / total)


def measure(margins: dict, labels: dict, images: dict, plan: FoldPlan, rules: Sequence[str]) -> list[dict]:
    """Per query and organ: the protocol's Dice and each rule's whole-volume and true-slice Dice."""
    from util.segment.rule import align_evidence, label_free_mask, masks_by_part, support_evidence

    rows = []
    for organ in plan.organs:
        sup_truth = labels[plan.support] == organ                              # Z x H x W
        sup_margins = margins[(organ, plan.support)]
        evidence = {"support": support_evidence(sup_margins, sup_truth),
                    "align": align_evidence(sup_margins, sup_truth, images[plan.support])}
        for sid in plan.queries:
            truth = labels[sid] == organ
            zs = np.flatnonzero(truth.any(axis=(1, 2)))
            z0, z1 = int(zs[0]), int(zs[-1])
            counted = slice(z0, z1 + 1)
            m = margins[(organ, sid)]
            row = {"scan": sid, "organ": organ, "truth": [z0, z1],
                   "protocol": dice(masks_by_part(m, z0, z1) > 0, truth)}
            for rule in rules:
                res = label_free_mask(m, rule, evidence.get(rule), images[sid])
                row[rule] = {"whole": dice(res.mask > 0, truth),
                             "true_slices": dice(res.mask[counted] > 0, truth[counted]),
                             "extent": None if res.extent is None else list(res.extent),
                             "how": res.how}
            rows.append(row)
    return rows


def markdown(rows: list[dict], rules: Sequence[str], card_labels: Sequence[str]) -> str:
    """Per-scan table (whole-volume Dice; true-slice Dice in brackets) and the mean row."""
    head = "| scan | organ | truth | protocol | " + " | ".join(f"`{r}`" for r in rules) + " |"
    lines = [head, "|" + "---|" * (4 + len(rules))]
    for row in rows:
        cells = [f"{row[r]['whole']:.3f} ({row[r]['true_slices']:.3f}) "
                 f"{_range(row[r]['extent'])}" for r in rules]
        lines.append(f"| {row['scan']} | {card_labels[row['organ']]} | {_range(row['truth'])} | "
                     f"{row['protocol']:.3f} | " + " | ".join(cells) + " |")
    def mean(f) -> float:
        return float(np.mean([f(r) for r in rows]))

    def rule_means(rule: str) -> str:
        whole = mean(lambda x: x[rule]["whole"])
        return f"**{whole:.3f}** ({mean(lambda x: x[rule]['true_slices']):.3f})"

    cells = [rule_means(r) for r in rules]
    lines.append(f"| mean | | | **{mean(lambda x: x['protocol']):.3f}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(rows: list[dict], rules: Sequence[str]) -> str:
    """The means over all (query, organ) pairs, one line per rule (docs/segment.md's tables)."""
    prot = float(np.mean([r["protocol"] for r in rows]))
    lines = ["| rule | whole-volume Dice | Dice on the organ's true slices | whole / protocol |",
             "|---|---|---|---|",
             f"| protocol (`--z-range` = ground truth) | {prot:.3f} | {prot:.3f} | 1.00 |"]
    for rule in rules:
        whole = float(np.mean([r[rule]["whole"] for r in rows]))
        true = float(np.mean([r[rule]["true_slices"] for r in rows]))
        lines.append(f"| `{rule}` | {whole:.3f} | {true:.3f} | {whole / prot:.2f} |")
    return "\n".join(lines)


def _range(extent) -> str:
    return "-" if extent is None else f"{extent[0]}-{extent[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    from data.cards import load_card
    from tests.realdata import chaos_dir
    from util.checkpoint import read_snapshot
    from util.log import setup_logging
    from util.segment.rule import RULES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.segment --dice",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a snapshot of training.py (its config names "
                                                      "the fold and the organs tested)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the preprocessed CHAOS MR scans (default: $ALPNET_CHAOS_DIR)")
    parser.add_argument("--cache", type=Path, default=None, help="keep the network's outputs here")
    parser.add_argument("--organs", type=int, nargs="+", default=None,
                        help="label values to measure (default: the organs tested in the "
                             "checkpoint's setting, label_sets)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    setup_logging()
    data_dir = args.data_dir or chaos_dir()
    if data_dir is None:
        parser.error("no CHAOS scans: give --data-dir or set ALPNET_CHAOS_DIR")
    card = load_card(CARD)
    config = read_snapshot(args.checkpoint).get("config") or {}
    plan = fold_plan(config, card, Path(data_dir), args.organs)
    log.info("fold %d, label set %d: queries %s, support %d, organs %s", plan.fold, plan.label_sets,
             plan.queries, plan.support, plan.organs)
    margins, labels, images = network_margins(args.checkpoint, Path(data_dir), plan,
                                      MarginCache(args.cache, args.checkpoint),
                                      batch_size=args.batch_size)
    rows = measure(margins, labels, images, plan, RULES)
    if args.json is not None:
        from util.io import atomic_write_json

        atomic_write_json({"checkpoint": str(args.checkpoint), "plan": dataclasses.asdict(plan),
                           "rows": rows}, args.json, indent=1)
    print(f"fold {plan.fold}, queries {', '.join(map(str, plan.queries))}, support {plan.support}: "
          "whole-volume Dice (Dice on the organ's true slices) and the slices predicted")
    print(summary_markdown(rows, RULES))
    print()
    print(markdown(rows, RULES, card.labels))
    return 0
