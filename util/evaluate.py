"""One validation run (docs/validation.md): fold scans, every snapshot asked for, the Roy et al. protocol
with query slices split over ranks, metrics logged under the original Sacred names, predictions
and figures written by rank 0.

Defined behaviour where the original crashed (docs/method.md, 'Validation protocol'):
- a support scan without a test organ: ``OrganMissingError`` naming the scan and organ;
- a query scan without a test organ: that (scan, organ) pair is skipped with a warning (no
  prediction file, NaN in the raw tables, left out of the class and overall means).

Distributed: rank r predicts slices ``r, r + N, ...`` of every query scan; TP/FP/FN counts
(int64) and the predicted masks are summed over ranks before anything is computed, so N ranks
give exactly the numbers of one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from data.cards import Card, base_name, load_card
from dataloaders.niftiio import spacing_zyx, write_like
from dataloaders.validation_set import ValidationSet, load_validation_set, read_record
from util.checkpoint import list_snapshots, load_alpnet_weights
from util.distributed import all_reduce_sum, get_rank, get_world_size, is_main_process
from util.io import atomic_write_sitk
from util.metric import Metric, assd, hd95, reduce_raw
from util.protocol import (Support, SupportScan, assign_parts, build_support, counted_slices,
                           encode_slices, logits_one_at_a_time, organ_z_range,
                           predict_from_support)

__all__ = ["EvalOptions", "SnapshotResult", "resolve_snapshots", "build_model",
           "evaluate_snapshot", "sacred_metrics", "log_result", "write_predictions",
           "dice_table", "steps_table", "run_validation", "run_directory", "PRED_DIR", "RAW_PRED_DIR"]

log = logging.getLogger(__name__)

PRED_DIR = "interm_preds"               # kept for compatibility
RAW_PRED_DIR = "interm_preds_raw"       # predictions in the raw scans' grids (new)
FIGURE_DIR = "figures"
PRED_NAME = "scan_{sid}_label_{c}.nii.gz"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Protocol settings (config keys ``n_sup_part``, ``z_margin``, ``val_wsize``,
    ``val_batch_size``, ``precision``).

    ``one_slice_at_a_time`` switches to the original inference: one ``forward`` per query slice
    and organ, the support images encoded again each time (``util.protocol.forward_one_slice``),
    instead of the support encoded once and the query slices in batches. Same predictions and
    metrics, several times slower; ``python -m benchmarks.validation`` times the two.
    """
    npart: int = 3
    z_margin: int = 0
    val_wsize: int = 2
    batch_size: int = 8
    precision: str = "fp32"
    one_slice_at_a_time: bool = False

    def check(self) -> "EvalOptions":
        for key, val, low in (("n_sup_part", self.npart, 1), ("z_margin", self.z_margin, 0),
                              ("val_wsize", self.val_wsize, 1), ("val_batch_size", self.batch_size, 1)):
            if int(val) < low:
                raise ValueError(f"{key}={val}: must be at least {low}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r}: expected 'fp32' or 'bf16'")
        return self


@dataclasses.dataclass
class SnapshotResult:
    """Everything validation computed for one snapshot (tables are query scans x test labels)."""
    step: int | None
    path: Path
    labels: list[int]
    query_ids: list[int]
    counts: np.ndarray                         # scans x labels x 3 int64 (TP, FP, FN), all ranks
    valid: np.ndarray                          # scans x labels: the query scan holds the organ
    dice: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    hd95: np.ndarray                           # mm; NaN where invalid or on ranks > 0
    assd: np.ndarray
    preds: dict[tuple[int, int], np.ndarray]   # (scan id, label) -> Z x H x W uint8 0/1
    supports: dict[int, Support]

    def summary(self, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        return reduce_raw(table, self.valid)


# ---------------------------------------------------------------- model and snapshots

def resolve_snapshots(reload_model_path: Any) -> list[Path]:
    """The snapshot files named by ``reload_model_path``: a file, a folder of ``<step>.pth``
    (or a run folder holding ``snapshots/``), or a list of those, in the given order.

    Raises:
        ValueError: unset, or a folder without any ``<step>.pth``.
        FileNotFoundError: a path that does not exist.
    """
    if reload_model_path in (None, "", []):
        raise ValueError("reload_model_path is not set: validation needs a snapshot "
                         "(reload_model_path=<run>/snapshots/<step>.pth, a snapshots folder or a list)")
    items = [reload_model_path] if isinstance(reload_model_path, (str, os.PathLike)) else list(reload_model_path)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            folder = p / "snapshots" if (p / "snapshots").is_dir() else p
            found = [path for _, path in list_snapshots(folder)]
            if not found:
                raise ValueError(f"reload_model_path {p}: no <step>.pth snapshot in {folder}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"reload_model_path {p}: no such file or folder")
    return out


def build_model(config: Mapping[str, Any], device: torch.device) -> torch.nn.Module:
    """A ``FewShotSeg`` from the config's ``model`` dict, without pretrained weights (each
    snapshot provides all of them), in eval mode on ``device``."""
    from models.grid_proto_fewshot import FewShotSeg

    cfg = dict(config["model"])
    cfg["init_weights"] = "random"
    cfg["reload_model_path"] = None
    model = FewShotSeg(in_channels=3, pretrained_path=None, cfg=cfg)
    return model.to(device).eval()


def _load_snapshot(model: torch.nn.Module, path: Path, config: Mapping[str, Any]) -> int | None:
    obj = load_alpnet_weights(model, path)
    snap_cfg = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
    if snap_cfg and snap_cfg.get("modelname") not in (None, config.get("modelname")):
        raise ValueError(f"{path}: trained with modelname={snap_cfg['modelname']!r}, validation "
                         f"runs modelname={config.get('modelname')!r}: pass modelname={snap_cfg['modelname']}")
    step = obj.get("step")
    if isinstance(step, int):
        return step
    return int(path.stem) if path.stem.isdigit() else None


# ---------------------------------------------------------------- the protocol

def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_snapshot(model: torch.nn.Module, vset: ValidationSet, opts: EvalOptions, *,
                      device: torch.device, step: int | None = None, path: Path = Path("."),
                      surface: bool = True) -> SnapshotResult:
    """Run the protocol (docs/method.md, 'Validation protocol') on every query scan and test organ.

    Each support slice is encoded once per organ and part; each query slice once, in batches of
    ``opts.batch_size``, and scored against every organ. A collective over ranks: every rank
    must call it.

    Returns:
        SnapshotResult; ``hd95``/``assd`` are computed on rank 0 only (``surface=True``).
    Raises:
        util.protocol.OrganMissingError: a support scan without a test organ.
    """
    rank, world = get_rank(), get_world_size()
    labels = list(vset.labels)
    n_q = len(vset.queries)
    sup_scans = [SupportScan(s.scan_id, s.image, s.label) for s in vset.support]
    metric = Metric(max_label=vset.card.n_classes - 1, n_scans=max(n_q, 1))
    valid = np.zeros((n_q, len(labels)), dtype=bool)
    preds: dict[tuple[int, int], np.ndarray] = {}
    with _autocast(device, opts.precision):
        supports = {c: build_support(model, sup_scans, c, opts.npart, device=device) for c in labels}
        for qi, scan in enumerate(vset.queries):
            h, w, n_z = scan.image.shape
            ranges = {c: organ_z_range(scan.label, c) for c in labels}
            for ci, c in enumerate(labels):
                valid[qi, ci] = ranges[c] is not None
                if ranges[c] is None:
                    log.warning("query scan %s has no voxel of label %d %s: skipped for this organ "
                                "(NaN in the raw tables, left out of the means)",
                                scan.scan_id, c, vset.card.labels[c])
            active = [c for c in labels if ranges[c] is not None]
            vol = torch.zeros((len(labels), n_z, h, w), dtype=torch.uint8)
            parts = {c: assign_parts(np.arange(n_z), *ranges[c], opts.npart) for c in active}
            counted = {c: counted_slices(n_z, *ranges[c], opts.z_margin) for c in active}
            mine = list(range(rank, n_z, world))
            for start in range(0, len(mine) if active else 0, opts.batch_size):
                chunk = mine[start:start + opts.batch_size]
                if not opts.one_slice_at_a_time:
                    fts = encode_slices(model, scan.image, chunk, device=device)  # B x C x H' x W'
                for c in active:
                    if opts.one_slice_at_a_time:
                        logits = logits_one_at_a_time(model, supports[c], scan.image, chunk,
                                                      parts[c][chunk], device=device,
                                                      val_wsize=opts.val_wsize)
                    else:
                        logits = predict_from_support(model, supports[c], fts, parts[c][chunk],
                                                      img_size=(h, w), val_wsize=opts.val_wsize)
                    pred = logits.argmax(dim=1).to(torch.uint8).cpu()          # B x H x W
                    vol[labels.index(c), chunk] = pred
                    keep = [k for k, z in enumerate(chunk) if counted[c][z]]
                    if keep:
                        gt = np.moveaxis(scan.label[..., [chunk[k] for k in keep]] == c, -1, 0)
                        metric.record(pred[keep].numpy(), gt.astype(np.uint8), labels=[c], n_scan=qi)
            vol = all_reduce_sum(vol.to(device)).cpu()     # each slice was predicted by one rank
            for c in active:
                preds[(scan.scan_id, c)] = vol[labels.index(c)].numpy()
    counts = torch.from_numpy(metric.counts).to(device)
    metric.counts = all_reduce_sum(counts).cpu().numpy()
    counts = metric.counts[:n_q][:, labels]
    _, _, _, _, dice = metric.get_mDice(labels=labels, give_raw=True)
    prec_rec = metric.get_mPrecRecall(labels=labels, give_raw=True)
    hd = np.full((n_q, len(labels)), np.nan)
    asd = np.full((n_q, len(labels)), np.nan)
    if surface and rank == 0:
        for qi, scan in enumerate(vset.queries):
            sp = spacing_zyx(scan.geometry)
            for ci, c in enumerate(labels):
                if not valid[qi, ci]:
                    continue
                z_min, z_max = organ_z_range(scan.label, c)
                keep = counted_slices(scan.n_slices, z_min, z_max, opts.z_margin)
                pred = preds[(scan.scan_id, c)] * keep[:, None, None]
                gt = np.moveaxis(scan.label == c, -1, 0)
                hd[qi, ci], asd[qi, ci] = hd95(pred, gt, sp), assd(pred, gt, sp)
    nan_invalid = lambda t: np.where(valid, t[:n_q], np.nan)  # noqa: E731
    return SnapshotResult(step, Path(path), labels, list(vset.query_ids), counts, valid,
                          nan_invalid(dice), nan_invalid(prec_rec[8]), nan_invalid(prec_rec[9]),
                          hd, asd, preds, supports)


# ---------------------------------------------------------------- outputs

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


def run_validation(config: Mapping[str, Any], *, device: torch.device, run: Any = None,
                   out_dir: Path | None = None) -> list[SnapshotResult]:
    """Validate every snapshot of ``reload_model_path`` on fold ``eval_fold``.

    Args:
        config: the Sacred config (docs/method.md, 'Config keys').
        device: this rank's device (``DistInfo.device``).
        run: the Sacred run for ``log_scalar`` (rank 0; None: nothing logged).
        out_dir: run folder for predictions and figures (rank 0; None: nothing written).
    Raises:
        ValueError / FileNotFoundError: bad config, snapshot or data (named).
    """
    opts = EvalOptions(int(config["n_sup_part"]), int(config["z_margin"]), int(config["val_wsize"]),
                       int(config.get("val_batch_size", 8)), str(config.get("precision", "fp32"))).check()
    snapshots = resolve_snapshots(config["reload_model_path"])
    dataset = str(config["dataset"])
    card = load_card(dataset)
    paths = config["path"]
    if base_name(dataset) not in paths:
        raise ValueError(f"path.{base_name(dataset)}.data_dir is not set (validation reads the "
                         f"manual labels of {base_name(dataset)})")
    data_dir = paths[base_name(dataset)]["data_dir"]
    stats_dir = paths.get(dataset, {}).get("data_dir", data_dir)
    vset = load_validation_set(card, data_dir, fold=int(config["eval_fold"]),
                               label_sets=int(config["label_sets"]),
                               support_idx=list(config["support_idx"]),
                               n_shots=int(config["task"]["n_shots"]), stats_dir=stats_dir,
                               num_workers=int(config.get("num_workers", 0)))
    model = build_model(config, device)
    results = []
    for i, path in enumerate(snapshots):
        step = _load_snapshot(model, path, config)
        model.eval()
        log.info("validating %s (step %s), snapshot %d of %d", path, step, i + 1, len(snapshots))
        res = evaluate_snapshot(model, vset, opts, device=device, step=step, path=path)
        results.append(res)
        if not is_main_process():
            continue
        if run is not None:
            log_result(run, res)
        if out_dir is not None:
            sub = Path(out_dir) if len(snapshots) == 1 else Path(out_dir) / f"step_{step if step is not None else i}"
            write_predictions(res, vset, sub, raw_geometry=bool(config.get("save_raw_geometry", True)))
            if config.get("write_figures", True):
                from util.figures import validation_figures
                validation_figures(res, vset, sub / FIGURE_DIR)
    return results
