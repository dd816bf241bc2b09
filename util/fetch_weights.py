"""Download the pretrained encoder weights into the torch hub cache (run where there is internet).

Runs never download (compute nodes have no internet); they read torchvision's weight files from
``<torch.hub.get_dir()>/checkpoints/`` (``$TORCH_HOME/hub/checkpoints``, default
``~/.cache/torch/hub/checkpoints``) and stop with a message naming this command when one is
missing. By default this fetches both files of ``dlfcn_res101``: torchvision's COCO
DeepLabV3-ResNet101 (``init_weights=coco``, ``use_coco_init=True``) and ImageNet ResNet-101
(``init_weights=imagenet``, ``use_coco_init=False``). If the compute machine has no internet
either, run it elsewhere with the same ``TORCH_HOME`` layout and copy the ``checkpoints`` folder.

    python -m util.fetch_weights                         # res101: coco + imagenet
    python -m util.fetch_weights --model all             # also the res50/res18 demo encoders
    python -m util.fetch_weights --list                  # paths and whether they are cached
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch.hub

from data.cli import new_parser
from models.backbone.weights import MODEL_NAMES, WeightsSpec, available_specs, hub_checkpoint_dir
from util.checkpoint import read_snapshot

__all__ = ["FetchReport", "select_specs", "fetch", "main"]

log = logging.getLogger(__name__)

Downloader = Callable[..., None]   # torch.hub.download_url_to_file(url, dst, hash_prefix, progress)


@dataclass
class FetchReport:
    """What ``fetch`` did: paths downloaded, already present, and failures with their reason."""

    downloaded: list[Path] = field(default_factory=list)
    present: list[Path] = field(default_factory=list)
    failed: list[tuple[str, Path, str]] = field(default_factory=list)   # (url, path, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


def select_specs(model: str = "dlfcn_res101", init: str = "all") -> list[WeightsSpec]:
    """The weight files for ``model`` ('all' or a name) and ``init`` ('all', 'coco', 'imagenet').

    Raises:
        ValueError: nothing matches (e.g. ``--model dlfcn_res18 --init coco``).
    """
    specs = [s for s in available_specs(None if model == "all" else model)
             if init == "all" or s.init == init]
    if not specs:
        raise ValueError(f"no pretrained weights for model={model!r}, init={init!r}")
    return specs


def _hash_prefix(spec: WeightsSpec) -> str | None:
    match = torch.hub.HASH_REGEX.search(spec.file_name)
    return match.group(1) if match else None


def fetch(specs: Sequence[WeightsSpec], *, force: bool = False,
          download: Downloader = torch.hub.download_url_to_file) -> FetchReport:
    """Download each missing file to its cache path (sha256 prefix of the name checked; written
    to a partial file and moved into place), then check that it loads ``weights_only``.

    Failures (no network, bad hash, unreadable file) are collected, not raised.
    """
    report = FetchReport()
    for spec in specs:
        dst = spec.cache_path
        if dst.is_file() and not force:
            report.present.append(dst)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s -> %s", spec.url, dst)
        try:
            download(spec.url, str(dst), hash_prefix=_hash_prefix(spec), progress=True)
            read_snapshot(dst)
        except (OSError, RuntimeError, ValueError) as err:   # URLError is an OSError
            report.failed.append((spec.url, dst, f"{type(err).__name__}: {err}"))
            continue
        report.downloaded.append(dst)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser(
        "python -m util.fetch_weights",
        "Download torchvision's pretrained weights for the ALPNet encoders into the torch hub\n"
        f"cache (now: {hub_checkpoint_dir()}; set TORCH_HOME to change it).\n"
        "Training and validation never download; run this on a machine with internet\n"
        "(docs/training.md, 'Pretrained weights').")
    parser.add_argument("--model", choices=[*MODEL_NAMES, "all"], default="dlfcn_res101",
                        help="encoder (config key modelname)")
    parser.add_argument("--init", choices=["coco", "imagenet", "all"], default="all",
                        help="weights (config key init_weights; all: coco and imagenet)")
    parser.add_argument("--force", action="store_true", help="download even if cached")
    parser.add_argument("--list", action="store_true",
                        help="only print the files, their cache paths and whether they exist")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        specs = select_specs(args.model, args.init)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.list:
        for s in specs:
            state = "cached" if s.cache_path.is_file() else "missing"
            print(f"{s.modelname:13s} {s.init:9s} {state:8s} {s.cache_path}  <- {s.url}")
        return 0
    report = fetch(specs, force=args.force)
    for url, path, reason in report.failed:
        print(f"FAILED {url} -> {path}: {reason}", file=sys.stderr)
    if report.failed:
        print(f"No internet here? Run `python -m util.fetch_weights` on a machine with internet "
              f"and copy {hub_checkpoint_dir()} to the same place (under TORCH_HOME) here.",
              file=sys.stderr)
    print(f"{len(report.downloaded)} downloaded, {len(report.present)} already cached, "
          f"{len(report.failed)} failed ({hub_checkpoint_dir()})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
