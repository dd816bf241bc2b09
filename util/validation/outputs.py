"""What a validation run leaves behind (docs/validation.md, 'Outputs'): the metrics under the
original Sacred names, the predicted masks as NIfTI (the preprocessed grid and the raw scan's),
and the Markdown tables printed at the end.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from data.cards import Card
from dataloaders.niftiio import write_like
from dataloaders.validation_set import ValidationSet, read_record
from util.io import atomic_write_sitk
from util.tensorboard_log import add_png, add_scalars
from util.validation.result import SnapshotResult

__all__ = ["PRED_DIR", "RAW_PRED_DIR", "PRED_NAME", "TB_METRICS", "sacred_metrics", "log_result",
           "tensorboard_metrics", "log_tensorboard",
           "write_predictions", "dice_table", "steps_table", "run_directory"]

log = logging.getLogger(__name__)


PRED_DIR = "interm_preds"               # kept for compatibility


RAW_PRED_DIR = "interm_preds_raw"       # predictions in the raw scans' grids (new)


PRED_NAME = "scan_{sid}_label_{c}.nii.gz"


def sacred_metrics(res: SnapshotResult) -> dict[str, Any]:
    """The original metric names (kept for compatibility, the misspelt ones too) and the surface
    metrics beside them, as plain Python values."""
    out: dict[str, Any] = {}
    for key, table, mean_key, raw_key in (
            ("Dice", res.dice, "mar_val_batches_meanDice", "mar_val_batches_rawDice"),
            ("Prec", res.precision, "mar_val_batches_meanPrec", "mar_val_batches_rawPrec"),
            ("Rec", res.recall, "mar_val_al_batches_meanRec", "mar_val_al_batches_rawRec"),
            ("HD95", res.hd95, "mar_val_batches_meanHD95", "mar_val_batches_rawHD95"),
            ("ASSD", res.assd, "mar_val_batches_meanASSD", "mar_val_batches_rawASSD")):
        cls_mean, _, mean, _ = res.summary(table)
        out[f"mar_val_batches_class{key}"] = cls_mean.tolist()
        out[mean_key] = float(mean)
        out[raw_key] = table.tolist()
    return out


def log_result(run: Any, res: SnapshotResult) -> None:
    """``run.log_scalar(name, value, step)`` for every metric of :func:`sacred_metrics`."""
    for name, value in sacred_metrics(res).items():
        if res.step is None:
            run.log_scalar(name, value)
        else:
            run.log_scalar(name, value, res.step)


# TensorBoard tag and the SnapshotResult table behind it (docs/validation.md, 'Outputs')
TB_METRICS = (("dice", "dice"), ("precision", "precision"), ("recall", "recall"),
              ("hd95_mm", "hd95"), ("assd_mm", "assd"))


def tensorboard_metrics(res: SnapshotResult, card: Card) -> dict[str, float]:
    """``val/<metric>/<organ>`` (the class means over the query scans) and ``val/<metric>/mean``
    (the overall mean of the tables), the numbers of :func:`sacred_metrics`."""
    out: dict[str, float] = {}
    for tag, attr in TB_METRICS:
        cls_mean, _, mean, _ = res.summary(getattr(res, attr))
        for c, value in zip(res.labels, cls_mean):
            out[f"val/{tag}/{card.labels[c]}"] = float(value)
        out[f"val/{tag}/mean"] = float(mean)
    return out


def log_tensorboard(writer: Any, res: SnapshotResult, card: Card, step: int,
                    figures: Sequence[Path] = ()) -> None:
    """One validated snapshot into a TensorBoard writer at ``step``: the metrics of
    :func:`tensorboard_metrics` and each figure as an image ``figures/<file stem>``."""
    if writer is None:
        return
    add_scalars(writer, tensorboard_metrics(res, card), step)
    for path in figures:
        add_png(writer, f"figures/{Path(path).stem}", path, step)
    writer.flush()


def write_predictions(res: SnapshotResult, vset: ValidationSet, out_dir: Path, *,
                      raw_geometry: bool = True) -> list[Path]:
    """``<out_dir>/interm_preds/scan_<id>_label_<c>.nii.gz`` (mask times c, uint8) in the
    preprocessed scan's geometry, and, when ``record_<id>.json`` exists and ``data.geometry`` is
    available, the same mask in the raw scan's grid under ``interm_preds_raw/``."""
    written = []
    restore = None
    if raw_geometry and importlib.util.find_spec("data.geometry") is not None:
        from data.geometry import restore_to_raw as restore
    elif raw_geometry:
        log.warning("data.geometry is not available: predictions are not written in the raw geometry")
    for scan in vset.queries:
        full_zyx = _shape_zyx(scan.geometry)
        record = read_record(vset.card, vset.data_dir, scan.scan_id) if restore else None
        for c in res.labels:
            mask = res.preds.get((scan.scan_id, c))
            if mask is None:
                continue
            arr = np.zeros(full_zyx, dtype=np.uint8)
            arr[:, : mask.shape[1], : mask.shape[2]] = mask * np.uint8(c)
            name = PRED_NAME.format(sid=scan.scan_id, c=c)
            written.append(write_like(arr, scan.geometry, out_dir / PRED_DIR / name))
            if record is not None:
                written.append(atomic_write_sitk(restore(arr, record), out_dir / RAW_PRED_DIR / name))
    return written


def _shape_zyx(img: Any) -> tuple[int, int, int]:
    """Array shape (Z, H, W) of a 3-D SimpleITK image."""
    x, y, z = img.GetSize()[:3]
    return (z, y, x)


def _fmt(v: float) -> str:
    return "nan" if np.isnan(v) else ("inf" if np.isinf(v) else f"{v:.4f}")


def dice_table(res: SnapshotResult, card: Card) -> str:
    """Markdown table: Dice per query scan and organ, the class means, HD95 and ASSD means."""
    names = [card.labels[c] for c in res.labels]
    lines = ["| scan | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 2) + "|"]
    for qi, sid in enumerate(res.query_ids):
        row = res.dice[qi]
        vals = row[res.valid[qi]]
        lines.append(f"| {sid} | " + " | ".join(_fmt(v) for v in row) +
                     f" | {_fmt(vals.mean()) if vals.size else 'nan'} |")
    for key, table in (("Dice", res.dice), ("HD95 mm", res.hd95), ("ASSD mm", res.assd)):
        cls_mean, _, mean, _ = res.summary(table)
        lines.append(f"| **{key}** | " + " | ".join(_fmt(v) for v in cls_mean) + f" | {_fmt(mean)} |")
    return "\n".join(lines)


def steps_table(results: Sequence[SnapshotResult], card: Card) -> str:
    """Markdown table: mean Dice per organ for each snapshot step (several snapshots)."""
    names = [card.labels[c] for c in results[0].labels]
    lines = ["| step | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 2) + "|"]
    for r in results:
        cls_mean, _, mean, _ = r.summary(r.dice)
        lines.append(f"| {r.step} | " + " | ".join(_fmt(v) for v in cls_mean) + f" | {_fmt(mean)} |")
    return "\n".join(lines)


def run_directory(run: Any) -> Path | None:
    """The FileStorageObserver folder of a Sacred run (rank 0), or None."""
    for obs in getattr(run, "observers", []) or []:
        if getattr(obs, "dir", None):
            return Path(obs.dir)
    return None
