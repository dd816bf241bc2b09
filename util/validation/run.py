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

import dataclasses
import logging
from pathlib import Path
from typing import Any, Collection, Mapping

import numpy as np
import torch

from data.cards import base_name, load_card
from dataloaders.scans import Scan
from dataloaders.validation_set import ValidationSet, load_validation_set
from models.builder import build_model
from util.backends import PRECISIONS, autocast
from util.checkpoint import load_alpnet_weights, read_snapshot, resolve_snapshots
from util.config_keys import as_lists
from util.distributed import all_reduce_sum, get_rank, get_world_size, is_main_process
from util.io import spacing_zyx
from util.metric import Metric, assd, dice_from_counts, hd95, precision_from_counts, recall_from_counts
from util.tensorboard_log import TENSORBOARD_KEY, open_writer
from util.validation.figures import FIGURE_DIR, validation_figures
from util.validation.outputs import log_result, log_tensorboard, write_predictions
from util.validation.protocol import (
    Support,
    SupportScan,
    assign_parts,
    build_support,
    counted_slices,
    encode_slices,
    logits_one_at_a_time,
    organ_z_range,
    predict_from_support,
)
from util.validation.result import SnapshotResult

__all__ = ["EvalOptions", "evaluate_snapshot", "run_validation", "load_snapshot",
           "options_from_config", "network_from_snapshot", "NETWORK_KEYS"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Protocol settings (config keys ``n_sup_part``, ``z_margin``, ``val_wsize``,
    ``val_batch_size``, ``precision``).

    ``one_slice_at_a_time`` switches to the original inference: one ``forward`` per query slice
    and organ, the support images encoded again each time (``protocol.forward_one_slice``),
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {list(PRECISIONS)}")
        return self


def options_from_config(config: Mapping[str, Any]) -> EvalOptions:
    """The protocol settings of a Sacred config, checked."""
    return EvalOptions(int(config["n_sup_part"]), int(config["z_margin"]), int(config["val_wsize"]),
                       int(config.get("val_batch_size", 8)), str(config.get("precision", "fp32"))).check()


# the network options a snapshot decides (docs/validation.md, 'Running validation'): config key
# and its name in the config's ``model`` dict
NETWORK_KEYS = (("modelname", "which_model"), ("clsname", "cls_name"),
                ("proto_grid_size", "proto_grid_size"), ("feature_hw", "feature_hw"))


def _snapshot_config(path: Path) -> Mapping[str, Any] | None:
    obj = read_snapshot(path)
    cfg = obj.get("config") if isinstance(obj, Mapping) else None
    return cfg if isinstance(cfg, Mapping) else None


def network_from_snapshot(config: Mapping[str, Any], snap_cfg: Mapping[str, Any] | None,
                          given: Collection[str] = ()) -> dict[str, Any]:
    """``config`` with the network options of the snapshot's own config (``NETWORK_KEYS``),
    except those in ``given`` (set on the command line, named configs included): an override is
    kept, with a one-line note. A bare state_dict (no config) changes nothing.
    """
    out = dict(config)
    if not snap_cfg:
        return out
    snap_model = snap_cfg.get("model") if isinstance(snap_cfg.get("model"), Mapping) else {}
    model = dict(config["model"])
    for key, model_key in NETWORK_KEYS:
        theirs = snap_cfg.get(key, snap_model.get(model_key))
        if theirs is None or as_lists(theirs) == as_lists(config.get(key)):
            continue
        if key in given:
            log.warning("%s=%r from the command line overrides the snapshot's %s=%r", key,
                        as_lists(config.get(key)), key, as_lists(theirs))
            continue
        log.info("%s=%r from the snapshot (the config said %r)", key, as_lists(theirs), as_lists(config.get(key)))
        out[key] = model[model_key] = as_lists(theirs)
    out["model"] = model
    return out


def load_snapshot(model: torch.nn.Module, path: Path, config: Mapping[str, Any]) -> int | None:
    """Load a snapshot's weights into ``model``; its step (from the snapshot, else the file name).

    Raises:
        ValueError: the snapshot was trained with another ``modelname``, or its weights do not
            fit the network (names the key to pass).
    """
    try:
        obj = load_alpnet_weights(model, path)
    except ValueError as err:
        if "weights do not fit the model" not in str(err):
            raise
        snap_cfg = _snapshot_config(path) or {}
        hint = (f"pass modelname={snap_cfg['modelname']}" if snap_cfg.get("modelname") else
                "pass the modelname it was trained with (modelname=dlfcn_res101, dlfcn_res50 or "
                "dlfcn_res18; the file holds no config to read it from)")
        raise ValueError(f"{path}: its weights do not fit the network of modelname="
                         f"{config.get('modelname')}: {hint} ({str(err).split('; ', 1)[-1][:300]} ...)") from err
    snap_cfg = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
    if snap_cfg and snap_cfg.get("modelname") not in (None, config.get("modelname")):
        raise ValueError(f"{path}: trained with modelname={snap_cfg['modelname']!r}, validation "
                         f"runs modelname={config.get('modelname')!r}: pass modelname={snap_cfg['modelname']}")
    step = obj.get("step")
    if isinstance(step, int):
        return step
    return int(path.stem) if path.stem.isdigit() else None


# ---------------------------------------------------------------- the protocol

def _present_labels(scan: Scan, vset: ValidationSet) -> dict[int, tuple[int, int]]:
    """The test organs ``scan`` holds, with their first and last slice; a warning for each missing."""
    ranges = {}
    for c in vset.labels:
        rng = organ_z_range(scan.label, c)
        if rng is None:
            log.warning("query scan %s has no voxel of label %d %s: skipped for this organ "
                        "(NaN in the raw tables, left out of the means)",
                        scan.scan_id, c, vset.card.labels[c])
        else:
            ranges[c] = rng
    return ranges


def _predict_query(model: torch.nn.Module, scan: Scan, qi: int, supports: dict[int, Support],
                   ranges: dict[int, tuple[int, int]], labels: list[int], opts: EvalOptions,
                   metric: Metric, device: torch.device) -> torch.Tensor:
    """This rank's slices ``rank, rank + N, ...`` of one query scan, every present organ: the
    counted slices recorded into ``metric`` (row ``qi``), the masks summed over ranks.

    Returns:
        labels x Z x H x W uint8 0/1 predictions (every slice, from all ranks).
    """
    h, w, n_z = scan.image.shape
    vol = torch.zeros((len(labels), n_z, h, w), dtype=torch.uint8)
    parts = {c: assign_parts(np.arange(n_z), *rng, opts.npart) for c, rng in ranges.items()}
    counted = {c: counted_slices(n_z, *rng, opts.z_margin) for c, rng in ranges.items()}
    mine = list(range(get_rank(), n_z, get_world_size()))
    for start in range(0, len(mine) if ranges else 0, opts.batch_size):
        chunk = mine[start:start + opts.batch_size]
        if not opts.one_slice_at_a_time:
            fts = encode_slices(model, scan.image, chunk, device=device)  # B x C x H' x W'
        for c in ranges:
            if opts.one_slice_at_a_time:
                logits = logits_one_at_a_time(model, supports[c], scan.image, chunk,
                                              parts[c][chunk], device=device, val_wsize=opts.val_wsize)
            else:
                logits = predict_from_support(model, supports[c], fts, parts[c][chunk],
                                              img_size=(h, w), val_wsize=opts.val_wsize)
            pred = logits.argmax(dim=1).to(torch.uint8).cpu()          # B x H x W
            vol[labels.index(c), chunk] = pred
            keep = [k for k, z in enumerate(chunk) if counted[c][z]]
            if keep:
                gt = np.moveaxis(scan.label[..., [chunk[k] for k in keep]] == c, -1, 0)
                metric.record(pred[keep].numpy(), gt.astype(np.uint8), labels=[c], n_scan=qi)
    return all_reduce_sum(vol.to(device)).cpu()     # each slice was predicted by one rank


def _surface_tables(vset: ValidationSet, valid: np.ndarray, preds: dict[tuple[int, int], np.ndarray],
                    z_margin: int) -> tuple[np.ndarray, np.ndarray]:
    """HD95 and ASSD (mm) per query scan and label, on the counted slices; NaN where invalid."""
    labels = list(vset.labels)
    hd = np.full(valid.shape, np.nan)
    asd = np.full(valid.shape, np.nan)
    for qi, scan in enumerate(vset.queries):
        sp = spacing_zyx(scan.geometry)
        for ci, c in enumerate(labels):
            if not valid[qi, ci]:
                continue
            z_min, z_max = organ_z_range(scan.label, c)
            keep = counted_slices(scan.n_slices, z_min, z_max, z_margin)
            pred = preds[(scan.scan_id, c)] * keep[:, None, None]
            gt = np.moveaxis(scan.label == c, -1, 0)
            hd[qi, ci], asd[qi, ci] = hd95(pred, gt, sp), assd(pred, gt, sp)
    return hd, asd


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
        protocol.OrganMissingError: a support scan without a test organ.
    """
    labels = list(vset.labels)
    n_q = len(vset.queries)
    sup_scans = [SupportScan(s.scan_id, s.image, s.label) for s in vset.support]
    metric = Metric(max_label=vset.card.n_classes - 1, n_scans=max(n_q, 1))
    valid = np.zeros((n_q, len(labels)), dtype=bool)
    preds: dict[tuple[int, int], np.ndarray] = {}
    with autocast(device, opts.precision):
        supports = {c: build_support(model, sup_scans, c, opts.npart, device=device) for c in labels}
        for qi, scan in enumerate(vset.queries):
            ranges = _present_labels(scan, vset)
            valid[qi] = [c in ranges for c in labels]
            vol = _predict_query(model, scan, qi, supports, ranges, labels, opts, metric, device)
            preds.update({(scan.scan_id, c): vol[labels.index(c)].numpy() for c in ranges})
    metric.counts = all_reduce_sum(torch.from_numpy(metric.counts).to(device)).cpu().numpy()
    counts = metric.counts[:n_q][:, labels]                     # scans x labels x 3
    if surface and get_rank() == 0:
        hd, asd = _surface_tables(vset, valid, preds, opts.z_margin)
    else:
        hd, asd = np.full(valid.shape, np.nan), np.full(valid.shape, np.nan)

    def nan_invalid(table: np.ndarray) -> np.ndarray:
        return np.where(valid, table, np.nan)

    return SnapshotResult(step, Path(path), labels, list(vset.query_ids), counts, valid,
                          nan_invalid(dice_from_counts(counts)), nan_invalid(precision_from_counts(counts)),
                          nan_invalid(recall_from_counts(counts)), hd, asd, preds, supports)


# ---------------------------------------------------------------- the run

def _load_fold(config: Mapping[str, Any]) -> ValidationSet:
    dataset = str(config["dataset"])
    card = load_card(dataset)
    paths = config["path"]
    if base_name(dataset) not in paths:
        raise ValueError(f"path.{base_name(dataset)}.data_dir is not set (validation reads the "
                         f"manual labels of {base_name(dataset)})")
    data_dir = paths[base_name(dataset)]["data_dir"]
    stats_dir = paths.get(dataset, {}).get("data_dir", data_dir)
    return load_validation_set(card, data_dir, fold=int(config["eval_fold"]),
                               label_sets=int(config["label_sets"]),
                               support_idx=list(config["support_idx"]),
                               n_shots=int(config["task"]["n_shots"]), stats_dir=stats_dir,
                               num_workers=int(config.get("num_workers", 0)))


def _write_outputs(config: Mapping[str, Any], res: SnapshotResult, vset: ValidationSet, sub: Path) -> list[Path]:
    """Predictions and figures of one snapshot; the figure files."""
    write_predictions(res, vset, sub, raw_geometry=bool(config.get("save_raw_geometry", True)))
    if config.get("write_figures", True):
        return validation_figures(res, vset, sub / FIGURE_DIR)
    return []


def _record(config: Mapping[str, Any], res: SnapshotResult, vset: ValidationSet, *, run: Any,
            out_dir: Path | None, writer: Any, index: int | None) -> None:
    """Rank 0: one snapshot's metrics (Sacred, TensorBoard at its step), predictions and figures
    (under ``step_<N>/`` when ``index`` says it is one of several)."""
    if run is not None:
        log_result(run, res)
    if out_dir is None:
        return
    step = res.step if res.step is not None else (index or 0)
    sub = Path(out_dir) if index is None else Path(out_dir) / f"step_{step}"
    figures = _write_outputs(config, res, vset, sub)
    log_tensorboard(writer, res, vset.card, step, figures)


def run_validation(config: Mapping[str, Any], *, device: torch.device, run: Any = None,
                   out_dir: Path | None = None, given: Collection[str] = ()) -> list[SnapshotResult]:
    """Validate every snapshot of ``reload_model_path`` on fold ``eval_fold``.

    Args:
        config: the Sacred config (docs/method.md, 'Config keys').
        device: this rank's device (``DistInfo.device``).
        run: the Sacred run for ``log_scalar`` (rank 0; None: nothing logged).
        out_dir: run folder for predictions and figures (rank 0; None: nothing written).
        given: config keys set on the command line: their network options override the
            snapshot's (the others come from the first snapshot, ``network_from_snapshot``).
    Raises:
        ValueError / FileNotFoundError: bad config, snapshot or data (named).
    """
    opts = options_from_config(config)
    snapshots = resolve_snapshots(config["reload_model_path"])
    config = network_from_snapshot(config, _snapshot_config(snapshots[0]) if snapshots else None, given)
    vset = _load_fold(config)
    model = build_model(config["model"], pretrained=False).to(device).eval()
    results = []
    writer = open_writer(out_dir if is_main_process() else None,
                         enabled=bool(config.get(TENSORBOARD_KEY, True)))
    try:
        for i, path in enumerate(snapshots):
            step = load_snapshot(model, path, config)
            model.eval()
            log.info("validating %s (step %s), snapshot %d of %d", path, step, i + 1, len(snapshots))
            res = evaluate_snapshot(model, vset, opts, device=device, step=step, path=path)
            results.append(res)
            if is_main_process():
                _record(config, res, vset, run=run, out_dir=out_dir, writer=writer,
                        index=i if len(snapshots) > 1 else None)
    finally:
        if writer is not None:
            writer.close()
    return results
