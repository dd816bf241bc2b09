"""Segment your own scans from one labelled example (docs/segment.md): a trained (or original) ALPNet
checkpoint, one support scan with its label, query scans in; masks in each query's own grid and
orientation, PNG overlays and a CSV of organ volumes out.

    python3 segment.py --checkpoint CKPT --support-image S.nii.gz --support-label SL.nii.gz \\
        --label C [C2 ...] [--label-map] --query Q.nii.gz [Q2.nii.gz ...] --out DIR \\
        [--dataset NAME | --modality MR|CT] \\
        [--preprocessed] [--z-range ZMIN ZMAX | --rule align|support|extent|max] [--device cpu|cuda]
        [--batch-size 8]

Wiring only: arguments -> ``util.segment.SegmentRequest`` -> ``util.segment.segment``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from util.builds import exit_on_mismatched_builds

exit_on_mismatched_builds()            # torch and torchvision of two builds: one error line, exit 2

import torch  # noqa: E402

from data.cli import new_parser, run_command  # noqa: E402
from util.backends import PRECISIONS  # noqa: E402
from util.log import setup_logging  # noqa: E402
from util.segment import DEFAULT_RULE, RULES, SegmentRequest, segment  # noqa: E402
from util.segment.inputs import DEFAULT_BATCH_SIZE, MODALITY_CARDS  # noqa: E402
from util.segment.labelmap import segment_organs  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = new_parser("python3 segment.py", __doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="ALPNet weights: a snapshot of training.py or an original bare state_dict")
    p.add_argument("--support-image", type=Path, required=True, help="the labelled support scan")
    p.add_argument("--support-label", type=Path, required=True, help="its label volume (same grid)")
    p.add_argument("--label", type=int, nargs="+", required=True,
                   help="label value C of the organ in --support-label; several: each organ in turn")
    p.add_argument("--label-map", action="store_true",
                   help="also write one label map per query holding every --label organ "
                        "(<query>_labels.nii.gz; overlaps keep the organ listed first; "
                        "docs/segment.md, 'Several organs')")
    p.add_argument("--query", type=Path, nargs="+", required=True, help="scan(s) to segment")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", help="dataset card (modality, normalisation, resampling; "
                                       "listed below); default: the checkpoint's dataset")
    src.add_argument("--modality", choices=sorted(MODALITY_CARDS), type=str.upper,
                     help=f"instead of --dataset: {', '.join(f'{k} = card {v}' for k, v in MODALITY_CARDS.items())}")
    p.add_argument("--preprocessed", action="store_true",
                   help="the inputs are already in the training geometry (no resampling)")
    p.add_argument("--z-range", type=int, nargs=2, metavar=("ZMIN", "ZMAX"),
                   help="first and last slice of the organ in the query (one query): parts "
                        "assigned as validation does; without it the label-free rule is used")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="query slices per batch")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: autocast, about 2x faster on GPUs and on CPUs with native bf16 "
                        "(docs/segment.md, 'Speed')")
    p.add_argument("--rule", choices=RULES, default=DEFAULT_RULE,
                   help="without --z-range, how the organ's slices are found (default "
                        f"{DEFAULT_RULE}: the query's slices paired with the support's by their "
                        "images, thresholds calibrated on the support's own slices; "
                        "docs/segment.md, 'Label-free rule')")
    p.add_argument("--norm-stats", type=float, nargs=2, metavar=("MEAN", "STD"),
                   help="CT: the training fold's intensity mean and std (default: the checkpoint's, "
                        "else the support scan's)")
    p.add_argument("--overlay-slices", type=int, default=4, help="slices in each PNG overlay (0: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (batch logs)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    setup_logging()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    request = SegmentRequest(
        checkpoint=args.checkpoint, support_image=args.support_image,
        support_label=args.support_label, label=args.label[0], queries=tuple(args.query),
        out=args.out, dataset=args.dataset, modality=args.modality,
        preprocessed=args.preprocessed, z_range=tuple(args.z_range) if args.z_range else None,
        device=device, batch_size=args.batch_size, rule=args.rule,
        norm_stats=tuple(args.norm_stats) if args.norm_stats else None,
        overlay_slices=args.overlay_slices, precision=args.precision)
    if len(args.label) == 1 and not args.label_map:
        report = segment(request, progress=not args.no_progress)
    else:
        report = segment_organs(request, args.label, label_map=args.label_map, progress=not args.no_progress)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))      # bad input: one error line, exit 2 (docs/segment.md)
