"""``python -m util.summarize RUNS_DIR...``: the paper's table from validation runs.

Finds every Sacred run folder (``config.json`` + ``metrics.json`` holding
``mar_val_batches_classDice``) under the given folders, groups the runs by dataset, setting
(1: ``exclude_cls_list`` empty, 2: not), number of shots and label group, and prints one row per
dataset and setting with the organs as columns (the paper's table layout): the mean over folds of the
per-organ Dice (x 100), its standard deviation over folds (population, ddof 0) and the number of
folds. Each organ's value comes from the label group that tests it. The ``Mean`` column is the
mean of the organ means, as in the paper.

Rules: of several runs for the same (dataset, setting, shots, label group, fold) the newest
(by ``run.json`` start time, else folder name) counts; a run that logged several snapshots
counts with its last step unless ``--step`` names one. Non-finite values (NaN: e.g. no query
scan held the organ; inf: empty prediction for HD95/ASSD) are left out of the mean and counted.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from data.cards import load_card
from data.cli import new_parser
from dataloaders.folds import test_labels

__all__ = ["RunRecord", "Cell", "TableRow", "find_runs", "table_rows", "to_markdown", "to_csv",
           "summarize", "main", "METRICS"]

log = logging.getLogger(__name__)

METRICS = {"Dice": ("mar_val_batches_classDice", 100.0), "HD95": ("mar_val_batches_classHD95", 1.0),
           "ASSD": ("mar_val_batches_classASSD", 1.0)}    # metric -> (Sacred name, display scale)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One validation run (one snapshot of it)."""
    path: Path
    dataset: str               # base card name (CHAOST2, SABS, ...)
    setting: int               # 1: nothing excluded in training, 2: test organs excluded
    label_group: int
    fold: int
    n_shots: int
    step: int | None
    values: dict[int, float]   # organ label -> class value (unscaled)
    started: str


@dataclasses.dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    n: int                     # folds with a finite value
    n_runs: int                # folds found

    def text(self, digits: int = 2) -> str:
        if self.n == 0:
            return f"n/a ({self.n_runs} folds, none finite)" if self.n_runs else ""
        folds = f"{self.n}" if self.n == self.n_runs else f"{self.n} of {self.n_runs}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} ({folds})"


@dataclasses.dataclass(frozen=True)
class TableRow:
    dataset: str
    setting: int
    n_shots: int
    organs: tuple[str, ...]
    cells: tuple[Cell, ...]
    mean: float                # mean of the organ means (NaN when none)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from err


def find_runs(roots: Sequence[str | Path], *, metric: str = "Dice", step: int | None = None) -> list[RunRecord]:
    """Every validation run folder under ``roots`` (searched recursively).

    Raises:
        FileNotFoundError: a root that does not exist.
        ValueError: an unknown metric, or a run whose files are not valid JSON (named).
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: choose one of {sorted(METRICS)}")
    name = METRICS[metric][0]
    out = []
    for root in map(Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such folder")
        for cfg_path in sorted(root.rglob("config.json")):
            run_dir = cfg_path.parent
            if not (run_dir / "metrics.json").is_file():
                continue
            metrics = _read_json(run_dir / "metrics.json")
            if name not in metrics:
                continue
            rec = _record(run_dir, _read_json(cfg_path), metrics[name], step)
            if rec is not None:
                out.append(rec)
    return out


def _record(run_dir: Path, cfg: dict, series: dict, step: int | None) -> RunRecord | None:
    try:
        card = load_card(cfg["dataset"])
        labels = test_labels(card, int(cfg["label_sets"]))
    except (KeyError, ValueError) as err:
        log.warning("%s: skipped (%s)", run_dir, err)
        return None
    steps, values = list(series.get("steps", [])), list(series.get("values", []))
    if not values:
        return None
    if step is None:
        idx = len(values) - 1
    elif step in steps:
        idx = steps.index(step)
    else:
        log.warning("%s: no value at step %s (steps %s): skipped", run_dir, step, steps)
        return None
    vals = values[idx]
    if len(vals) != len(labels):
        log.warning("%s: %d class values for test labels %s: skipped", run_dir, len(vals), labels)
        return None
    started = ""
    if (run_dir / "run.json").is_file():
        started = str(_read_json(run_dir / "run.json").get("start_time", ""))
    return RunRecord(run_dir, card.name, 2 if list(cfg.get("exclude_cls_list", [])) else 1,
                     int(cfg["label_sets"]), int(cfg.get("eval_fold", 0)),
                     int(cfg.get("task", {}).get("n_shots", 1)),
                     steps[idx] if idx < len(steps) else None,
                     {int(c): float("nan") if v is None else float(v) for c, v in zip(labels, vals)},
                     started)


def _newest(records: list[RunRecord]) -> list[RunRecord]:
    """One record per (dataset, setting, shots, label group, fold): the newest run."""
    best: dict[tuple, RunRecord] = {}
    for r in records:
        key = (r.dataset, r.setting, r.n_shots, r.label_group, r.fold)
        if key in best:
            log.warning("fold %d of %s setting %d group %d: several runs (%s, %s); the newest counts",
                        r.fold, r.dataset, r.setting, r.label_group, best[key].path, r.path)
        if key not in best or (r.started, str(r.path)) > (best[key].started, str(best[key].path)):
            best[key] = r
    return list(best.values())


def table_rows(records: Sequence[RunRecord], *, scale: float = 100.0) -> list[TableRow]:
    """One row per (dataset, setting, shots); columns the card's evaluated organs (``pa_all``)."""
    recs = _newest(list(records))
    rows = []
    for dataset, setting, shots in sorted({(r.dataset, r.setting, r.n_shots) for r in recs}):
        card = load_card(dataset)
        group = [r for r in recs if (r.dataset, r.setting, r.n_shots) == (dataset, setting, shots)]
        cells = []
        for organ in card.pa_all:
            vals = [r.values[organ] * scale for r in group if organ in r.values]
            finite = [v for v in vals if math.isfinite(v)]
            cells.append(Cell(float(np.mean(finite)) if finite else float("nan"),
                              float(np.std(finite)) if finite else float("nan"), len(finite), len(vals)))
        means = [c.mean for c in cells if c.n]
        rows.append(TableRow(dataset, setting, shots, tuple(card.labels[o] for o in card.pa_all),
                             tuple(cells), float(np.mean(means)) if means else float("nan")))
    return rows


def to_markdown(rows: Sequence[TableRow], metric: str = "Dice") -> str:
    """One Markdown table per organ set: cells ``mean ± std (n folds)``."""
    out = []
    for organs in dict.fromkeys(r.organs for r in rows):
        out.append(f"| dataset | setting | shots | {' | '.join(organs)} | Mean |")
        out.append("|---" * (len(organs) + 4) + "|")
        for r in (r for r in rows if r.organs == organs):
            mean = "n/a" if math.isnan(r.mean) else f"{r.mean:.2f}"
            out.append(f"| {r.dataset} | {r.setting} | {r.n_shots} | "
                       + " | ".join(c.text() for c in r.cells) + f" | {mean} |")
        out.append("")
    return f"{metric} (mean ± std over folds, number of folds)\n\n" + "\n".join(out).rstrip() + "\n"


def to_csv(rows: Sequence[TableRow], metric: str = "Dice") -> str:
    """Long format: dataset, setting, shots, organ, metric, mean, std, n_folds, n_runs."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "setting", "shots", "organ", "metric", "mean", "std", "n_folds", "n_runs"])
    for r in rows:
        for organ, c in zip(r.organs, r.cells):
            w.writerow([r.dataset, r.setting, r.n_shots, organ, metric, f"{c.mean:.6g}",
                        f"{c.std:.6g}", c.n, c.n_runs])
        w.writerow([r.dataset, r.setting, r.n_shots, "Mean", metric, f"{r.mean:.6g}", "", "", ""])
    return buf.getvalue()


def summarize(roots: Sequence[str | Path], *, metric: str = "Dice", step: int | None = None) -> list[TableRow]:
    """Find the runs under ``roots`` and build the table rows."""
    return table_rows(find_runs(roots, metric=metric, step=step), scale=METRICS[metric][1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("python -m util.summarize", __doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders holding validation runs (searched recursively)")
    parser.add_argument("--metric", choices=sorted(METRICS), default="Dice", help="metric of the table")
    parser.add_argument("--step", type=int, default=None, help="snapshot step to report (default: the last logged)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the CSV table to this file")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="what to print")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s - %(message)s")
    try:
        rows = summarize(args.runs, metric=args.metric, step=args.step)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no validation run (config.json + metrics.json with {METRICS[args.metric][0]}) under "
              f"{', '.join(map(str, args.runs))}: give the folder of the validation runs (path.log_dir of "
              "validation.py)", file=sys.stderr)
        return 2
    if args.csv is not None:
        from util.io import atomic_write_text
        atomic_write_text(to_csv(rows, args.metric), args.csv)
    print(to_markdown(rows, args.metric) if args.format == "markdown" else to_csv(rows, args.metric), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
