"""The small steps of ``examples/quickstart.sh`` that are easier in Python than in bash.

``python -m examples.quickstart_tools COMMAND ...``

- ``training-view DATA_DIR VIEW_DIR``: the folder training reads: links to every scan's image
  and superpixel files of ``DATA_DIR``, and nothing else (no ``label_*``, no ``classmap_*``).
  Self-supervised training (setting 1) needs no label; with this folder it could not read one
  even by mistake.
- ``newest-run EXPERIMENT_DIR``: the Sacred run folder with the highest numeric id.
- ``init-snapshot RUN_DIR``: ``RUN_DIR/snapshots/0.pth``, the untrained network that training
  started from: the run's config, its seed, the model built exactly as ``util.training.train``
  builds it (``seed_everything(seed)``, then ``build_model(cfg["model"])``).
- ``omp-wait [--load L] [--cores N]``: ``PASSIVE`` when OpenMP threads should sleep while they
  wait (the cores are crowded: a 1-minute load average of at least ``CROWDED_LOAD_PER_CORE`` per
  core), nothing when they should spin (libgomp's default). Measured in docs/training.md,
  'Speed on the CPU'.
- ``report --train RUN --val RUN [RUN ...]``: per-organ 1-shot Dice of the untrained (step 0)
  and the trained (last step) snapshot, read from the validation runs' Sacred ``metrics.json``
  (``mar_val_batches_classDice``), the run folders, and the figures written there.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["training_view", "newest_run", "init_snapshot", "dice_by_step", "before_after_figures",
           "report", "main", "TRAINING_FILE_KINDS", "DICE_METRIC", "BEFORE_AFTER_DIR", "omp_wait_policy",
           "CROWDED_LOAD_PER_CORE"]

# load average per core from which sleeping OpenMP threads beat spinning ones (measured on 2
# cores: spinning wins beside one other torch process, load 1 per core; loses beside three, 3)
CROWDED_LOAD_PER_CORE = 2.0

log = logging.getLogger(__name__)

TRAINING_FILE_KINDS = ("image", "superpix", "fgmask")   # what superpixel training may read
DICE_METRIC = "mar_val_batches_classDice"               # original Sacred name, one value per test label
INITIAL_STEP = 0
BEFORE_AFTER_DIR = "before_after"                       # <val run>/before_after/<figure>.png


def training_view(data_dir: Path, view_dir: Path, dataset: str) -> list[Path]:
    """Link the image, superpixel and body-mask files of every scan of ``data_dir`` into
    ``view_dir`` (created; stale links replaced); labels and class indices are left out.

    Returns:
        the links made.
    Raises:
        FileNotFoundError: ``data_dir`` holds no scan of the card's image pattern.
        ValueError: ``view_dir`` holds a label or class-index file (it must not).
    """
    from data.cards import load_card, scan_ids_in

    card = load_card(dataset)
    data_dir, view_dir = Path(data_dir).resolve(), Path(view_dir)
    ids = scan_ids_in(card, data_dir)
    view_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for src in sorted(data_dir.iterdir()):
        if not any(_matches(card.files[k], src.name) for k in TRAINING_FILE_KINDS):
            continue
        link = view_dir / src.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src)
        made.append(link)
    leaked = [p.name for p in view_dir.iterdir()
              if _matches(card.files["label"], p.name) or _matches(card.files["classmap"], p.name)]
    if leaked:
        raise ValueError(f"{view_dir}: holds label/class-index files {leaked}; training must not "
                         "see them: remove them")
    log.info("training view %s: %d files of %d scans, no label", view_dir, len(made), len(ids))
    return made


def _matches(pattern: str, name: str) -> bool:
    """Whether ``name`` fits a card file pattern such as ``superpix-{scale}_{id}.nii.gz``."""
    import re

    rx = re.escape(pattern).replace(r"\{id\}", r"\d+").replace(r"\{scale\}", r"[^_]+")
    rx = rx.replace(r"\{min_tp\}", r"\d+")
    return re.fullmatch(rx, name) is not None


def newest_run(experiment_dir: Path) -> Path:
    """The run folder of ``experiment_dir`` with the highest numeric name (Sacred run ids).

    Raises:
        FileNotFoundError: no such folder or no run in it.
    """
    experiment_dir = Path(experiment_dir)
    runs = [p for p in experiment_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if experiment_dir.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"{experiment_dir}: no Sacred run folder (1, 2, ...) in it")
    return max(runs, key=lambda p: int(p.name))


def init_snapshot(run_dir: Path) -> Path:
    """Write ``<run_dir>/snapshots/0.pth``: the network the run's training started from.

    The config is the one stored in the run's last snapshot (``config.json`` when there is none).

    Raises:
        FileNotFoundError: neither a snapshot nor ``config.json`` in ``run_dir``.
    """
    from models.builder import build_model
    from util.checkpoint import latest_snapshot, read_snapshot, save_snapshot
    from util.rng import seed_everything
    from util.training import SNAPSHOT_DIR

    run_dir = Path(run_dir)
    last = latest_snapshot(run_dir / SNAPSHOT_DIR)
    if last is not None:
        cfg = read_snapshot(last)["config"]
    elif (run_dir / "config.json").is_file():
        cfg = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    else:
        raise FileNotFoundError(f"{run_dir}: no snapshots/<step>.pth and no config.json to "
                                "rebuild the initial network from")
    seed_everything(int(cfg["seed"]))          # as util.training.train, right before build_model
    model = build_model(cfg["model"])
    return save_snapshot(run_dir / SNAPSHOT_DIR / f"{INITIAL_STEP}.pth", model=model,
                         step=INITIAL_STEP, config=cfg)


def omp_wait_policy(load: float | None = None, cores: int | None = None) -> str | None:
    """``"PASSIVE"`` when the cores are crowded (``load`` >= ``CROWDED_LOAD_PER_CORE`` x ``cores``),
    else None (keep libgomp's spinning). ``load``: the 1-minute load average, ``cores``: the CPUs
    this process may use; both read from the machine when None."""
    from util.machine import load_average, usable_cpus

    if load is None:
        load = load_average() or 0.0
    if cores is None:
        cores = usable_cpus()
    return "PASSIVE" if load >= CROWDED_LOAD_PER_CORE * max(cores, 1) else None


def dice_by_step(val_run: Path) -> tuple[list[str], dict[int, list[float]]]:
    """(organ names, {step: class Dice in that order}) of one validation run folder.

    Raises:
        FileNotFoundError / ValueError: a missing or malformed ``config.json``/``metrics.json``.
    """
    from data.cards import load_card
    from dataloaders.folds import test_labels

    val_run = Path(val_run)
    try:
        cfg = json.loads((val_run / "config.json").read_text(encoding="utf-8"))
        metrics = json.loads((val_run / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{val_run}: not a finished validation run ({err.filename} missing)") from err
    if DICE_METRIC not in metrics:
        raise ValueError(f"{val_run / 'metrics.json'}: no {DICE_METRIC} (did validation finish?)")
    card = load_card(cfg["dataset"])
    names = [card.labels[c] for c in test_labels(card, cfg["label_sets"])]
    entry = metrics[DICE_METRIC]
    out = {}
    for step, values in zip(entry["steps"], entry["values"]):
        if len(values) != len(names):
            raise ValueError(f"{val_run / 'metrics.json'}: {len(values)} Dice values for organs {names}")
        out[int(step)] = [float(v) for v in values]
    return names, out


def before_after_figures(val_run: Path, last_step: int) -> list[Path]:
    """Stack each validation figure of step 0 above the same figure of ``last_step`` (same
    support and query slices, untrained then trained predictions) into
    ``<val_run>/before_after/<name>.png``; figures of different sizes are left alone."""
    import numpy as np
    from matplotlib import image as mpimg

    from util.io import atomic_path

    val_run = Path(val_run)
    out = []
    for first in sorted((val_run / f"step_{INITIAL_STEP}").rglob("*.png")):
        rel = first.relative_to(val_run / f"step_{INITIAL_STEP}")
        last = val_run / f"step_{last_step}" / rel
        if not last.is_file():
            continue
        top, bottom = mpimg.imread(first), mpimg.imread(last)
        if top.shape[1:] != bottom.shape[1:]:
            log.warning("%s and %s differ in size: not stacked", first, last)
            continue
        target = val_run / BEFORE_AFTER_DIR / rel.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            mpimg.imsave(tmp, np.concatenate([top, bottom], axis=0), format="png")
        out.append(target)
    return out


def _fmt(v: float) -> str:
    return "  n/a" if v is None or math.isnan(v) else f"{100 * v:5.1f}"


def report(train_run: Path, val_runs: Sequence[Path]) -> str:
    """The quickstart's closing summary: Dice table (percent), run folders, figures.

    Raises:
        ValueError: a validation run without step 0 or without a later step.
    """
    organs: list[str] = []
    before: list[float] = []
    after: list[float] = []
    last_steps = set()
    for run in val_runs:
        names, by_step = dice_by_step(run)
        steps = sorted(by_step)
        if INITIAL_STEP not in by_step or len(steps) < 2:
            raise ValueError(f"{run}: validated steps {steps}; expected {INITIAL_STEP} and a trained one")
        organs += names
        before += by_step[INITIAL_STEP]
        after += by_step[steps[-1]]
        last_steps.add(steps[-1])
        before_after_figures(run, steps[-1])
    mean_b, mean_a = sum(before) / len(before), sum(after) / len(after)
    width = max(len(n) for n in organs + ["mean"])
    step_txt = "/".join(str(s) for s in sorted(last_steps))
    lines = ["", "1-shot Dice (%) on the held-out scans, untrained vs trained network",
             f"{'organ':<{width}}  untrained (step 0)  trained (step {step_txt})  change",
             f"{'-' * width}  ------------------  {'-' * (16 + len(step_txt))}  ------"]
    for name, b, a in zip(organs, before, after):
        lines.append(f"{name:<{width}}  {_fmt(b):>18}  {_fmt(a):>{16 + len(step_txt)}}  {100 * (a - b):+6.1f}")
    lines.append(f"{'mean':<{width}}  {_fmt(mean_b):>18}  {_fmt(mean_a):>{16 + len(step_txt)}}  "
                 f"{100 * (mean_a - mean_b):+6.1f}")
    lines += ["", "Run folders:", f"  training:   {train_run}"]
    lines += [f"  validation: {run}" for run in val_runs]
    figures = sorted(p for run in [train_run, *val_runs] for p in Path(run).rglob("*.png"))
    lines += (["", f"Figures (untrained above trained: {BEFORE_AFTER_DIR}/):"] + [f"  {p}" for p in figures]
              if figures else ["", "Figures: none written"])
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.quickstart_tools",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("training-view", help="image + superpixel links, no labels")
    v.add_argument("data_dir", type=Path)
    v.add_argument("view_dir", type=Path)
    v.add_argument("--dataset", default="CHAOST2_128")
    n = sub.add_parser("newest-run", help="the newest Sacred run folder of an experiment")
    n.add_argument("experiment_dir", type=Path)
    i = sub.add_parser("init-snapshot", help="snapshots/0.pth: the untrained network")
    i.add_argument("run_dir", type=Path)
    o = sub.add_parser("omp-wait", help="PASSIVE when the cores are crowded, else nothing")
    o.add_argument("--load", type=float, help="1-minute load average (default: this machine's)")
    o.add_argument("--cores", type=int, help="CPUs (default: those this process may use)")
    r = sub.add_parser("report", help="Dice before/after, run folders, figures")
    r.add_argument("--train", type=Path, required=True)
    r.add_argument("--val", type=Path, nargs="+", required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "training-view":
        made = training_view(args.data_dir, args.view_dir, args.dataset)
        print(f"training view {args.view_dir}: {len(made)} image/superpixel files, no label")
    elif args.command == "newest-run":
        print(newest_run(args.experiment_dir))
    elif args.command == "init-snapshot":
        print(init_snapshot(args.run_dir))
    elif args.command == "omp-wait":
        print(omp_wait_policy(args.load, args.cores) or "")
    else:
        print(report(args.train, args.val))
    return 0


if __name__ == "__main__":
    from util.log import setup_logging

    setup_logging()
    sys.exit(main())
