"""Segment a user's scans from one labelled support scan: the work behind ``segment.py``
(docs/segment.md).

Per call: the request is checked completely (:func:`util.segment.inputs.preflight`), the network
is built from the checkpoint, the support scan is brought to the training geometry and its
``n_sup_part`` support slices are encoded once (``util.validation.protocol.build_support``); then each
query is preprocessed, its slices encoded once in batches, predicted (with ``--z-range`` by the
protocol's part assignment, else by the label-free rule of :mod:`util.segment.rule`), and the mask
written in the query's own grid, with a PNG overlay; finally one CSV line per query with the
organ's volume.

Outputs in ``out``: ``<query stem>_label<C>.nii.gz`` (uint8, C inside the organ),
``<query stem>_label<C>.png`` and ``volumes_label<C>.csv``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dataloaders.scans import NormStats
from util.backends import autocast
from util.figures import plot_support_query
from util.io import atomic_write_text, read_image
from util.segment.checkpoint_info import build_segmenter
from util.segment.inputs import Plan, SegmentRequest, mask_name, preflight, query_stem
from util.segment.rule import align_evidence, label_free_mask, predict_every_part, support_evidence
from util.segment.volumes import (
    Prepared,
    mask_volume_ml,
    normalise_prepared,
    prepare_query,
    prepare_support,
    range_to_training,
    support_stats,
    write_mask,
)
from util.validation.protocol import (
    Support,
    SupportScan,
    assign_parts,
    build_support,
    forward_one_slice,
    predict_one_at_a_time,
    predict_volume,
)

__all__ = ["QueryResult", "SegmentReport", "segment", "segment_planned", "csv_name", "CSV_FIELDS"]

log = logging.getLogger(__name__)

SUPPORT_ORGAN = 1        # the support label is reduced to 0/1 before anything else
CALIBRATED = ("align", "support")   # label-free rules calibrated on the support's own slices
CSV_FIELDS = ("query", "mask", "label", "voxels", "volume_ml", "training_slices",
              "predicted_range", "how")


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """One query's outputs. ``predicted_range`` is in training-grid slices: the given
    ``--z-range`` mapped there, or the extent the label-free rule estimated (None: ``max``
    rule or nothing found)."""
    query: Path
    mask: Path
    overlay: Path | None
    label: int
    voxels: int
    volume_ml: float
    training_slices: int
    predicted_range: tuple[int, int] | None
    how: str


@dataclasses.dataclass
class SegmentReport:
    """What a call did: per-query results, the CSV, and how many slices went through the
    encoder (the support's part slices once per call, and with the ``align`` and ``support``
    rules each of its slices once more for the calibration; each query slice once)."""
    results: list[QueryResult]
    csv: Path
    support_slices: list[int]
    support_encoded: int
    query_encoded: int
    seconds: float

    def summary(self) -> str:
        lines = [f"{r.mask.name}: {r.volume_ml:.1f} mL ({r.how})" for r in self.results]
        lines.append(f"{len(self.results)} mask(s) and {self.csv.name} written to {self.csv.parent} "
                     f"in {self.seconds:.1f} s")
        return "\n".join(lines)


def csv_name(label: int) -> str:
    return f"volumes_label{int(label)}.csv"


def _norm_stats(plan: Plan, support: Prepared) -> NormStats | None:
    """CT (fold-global) statistics: ``--norm-stats``, else the checkpoint's recorded ones, else
    the support scan's own (fallback, logged)."""
    if plan.card.normalisation != "fold_global":
        return None
    if plan.request.norm_stats is not None:
        return NormStats(float(plan.request.norm_stats[0]), float(plan.request.norm_stats[1]))
    if plan.checkpoint.norm_stats is not None:
        return plan.checkpoint.norm_stats
    stats = support_stats(support)
    log.warning("%s normalises with the training fold's statistics, which %s does not record: "
                "using the support scan's mean %.3f and std %.3f for every scan (pass "
                "--norm-stats MEAN STD to set them)", plan.card.name, plan.checkpoint.path,
                stats.mean, stats.std)
    return stats


def _overlay_slices(mask_zyx: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` slices spread evenly over those holding the organ (else over the volume)."""
    zs = np.flatnonzero(mask_zyx.any(axis=(1, 2)))
    if zs.size == 0:
        zs = np.arange(mask_zyx.shape[0])
    picks = np.linspace(0, zs.size - 1, num=min(max(int(n), 1), zs.size)).round().astype(int)
    return [int(zs[i]) for i in sorted(set(picks.tolist()))]


def _overlay(support: Support, sup: Prepared, scan: Prepared, mask_zyx: np.ndarray, label: int,
             n: int, target: Path) -> Path:
    sup_row = [(f"support z={part.slices[0][1]} (part {i})", part.images[0],
                part.fg[0].cpu().numpy() > 0.5, sup.grid.GetDirection())
               for i, part in enumerate(support.parts)]
    qry_row = [(f"{scan.name} z={z}", scan.image[..., z], None, mask_zyx[z], scan.grid.GetDirection())
               for z in _overlay_slices(mask_zyx, n)]
    return plot_support_query([sup_row], qry_row, f"label {label}, training geometry", target)


def _predict_range(model: torch.nn.Module, support: Support, scan: Prepared, z_range: tuple[int, int],
                   plan: Plan, device: torch.device, bar: tqdm, one_at_a_time: bool = False) -> np.ndarray:
    """The protocol's prediction on the slices of ``z_range`` (others background)."""
    parts = assign_parts(np.arange(scan.n_slices), z_range[0], z_range[1], support.npart)
    mask = np.zeros((scan.n_slices,) + scan.image.shape[:2], dtype=np.uint8)
    zs = list(range(z_range[0], z_range[1] + 1))
    step = int(plan.request.batch_size)
    predict = predict_one_at_a_time if one_at_a_time else predict_volume
    for start in range(0, len(zs), step):
        chunk = zs[start:start + step]
        extra = {} if one_at_a_time else {"batch_size": step}
        pred = predict(model, support, scan.image, parts, zs=chunk, device=device,
                       val_wsize=plan.checkpoint.val_wsize, **extra)
        mask[chunk] = pred[chunk]
        bar.update(len(chunk))
    return mask


def _every_part_one_at_a_time(model: torch.nn.Module, support: Support, image_hwz: np.ndarray, *,
                              device: torch.device, val_wsize: int, on_batch=None) -> np.ndarray:
    """``predict_every_part`` the original way: one ``forward`` per slice and part, the support
    images encoded again each time (float32 npart x Z x H x W margins, organ logit minus
    background logit, as ``predict_every_part`` returns them)."""
    h, w, n_z = image_hwz.shape
    out = np.zeros((support.npart, n_z, h, w), dtype=np.float32)
    for z in range(n_z):
        for p, part in enumerate(support.parts):
            logits = forward_one_slice(model, part, image_hwz[..., z], device=device, val_wsize=val_wsize)
            out[p, z] = (logits[0, 1] - logits[0, 0]).float().cpu().numpy()
        if on_batch is not None:
            on_batch(1)
    return out


@dataclasses.dataclass
class _Session:
    """What every query of one request shares: the network, the prepared support and its
    prototypes, the normalisation and (label-free rules) the support's calibration."""
    plan: Plan
    model: torch.nn.Module
    device: torch.device
    sup: Prepared
    stats: NormStats | None
    support: Support
    one_at_a_time: bool
    evidence: object = None
    calibration_encoded: int = 0

    def every_part(self, image_hwz: np.ndarray, on_batch=None) -> np.ndarray:
        """npart x Z x H x W margins of every slice against every part."""
        val_wsize = self.plan.checkpoint.val_wsize
        if self.one_at_a_time:
            return _every_part_one_at_a_time(self.model, self.support, image_hwz, device=self.device,
                                             val_wsize=val_wsize, on_batch=on_batch)
        return predict_every_part(self.model, self.support, image_hwz,
                                  batch_size=self.plan.request.batch_size, device=self.device,
                                  val_wsize=val_wsize, on_batch=on_batch)


def _open_session(plan: Plan, model: torch.nn.Module | None, one_at_a_time: bool) -> _Session:
    """Build (or take) the network, prepare and normalise the support, encode its parts."""
    req, card = plan.request, plan.card
    device = torch.device(req.device)
    if model is None:
        model = build_segmenter(plan.checkpoint, device)
    npart = plan.checkpoint.npart
    sup = prepare_support(plan.support_image, plan.support_label, req.label, card,
                          preprocessed=req.preprocessed, name=query_stem(req.support_image))
    stats = _norm_stats(plan, sup)
    normalise_prepared(sup, card, stats)
    support = build_support(model, [SupportScan(sup.name, sup.image, sup.label)], SUPPORT_ORGAN,
                            npart, device=device)
    log.info("support %s: label %d on training slices %s (parts of %d)", sup.name, req.label,
             [p.slices[0][1] for p in support.parts], npart)
    return _Session(plan, model, device, sup, stats, support, one_at_a_time)


def _calibrate(session: _Session) -> None:
    """Label-free rules: the support's own slices as queries give the evidence its thresholds
    are calibrated on (``--z-range`` and the uncalibrated rules need none)."""
    req, sup = session.plan.request, session.sup
    if req.z_range is not None or req.rule not in CALIBRATED:
        return
    margins, truth = session.every_part(sup.image), np.moveaxis(sup.label, -1, 0) > 0
    if req.rule == "align":
        session.evidence = align_evidence(margins, truth, np.moveaxis(sup.image, -1, 0))
        scores = session.evidence.scores
    else:
        session.evidence = scores = support_evidence(margins, truth)
    session.calibration_encoded = sup.n_slices
    log.info("support %s calibrated: slice score threshold %.2f (balanced accuracy %.2f on "
             "its own %d slices)", sup.name, scores.threshold, scores.accuracy, sup.n_slices)


def _segment_query(session: _Session, path: Path, bar: tqdm) -> tuple[QueryResult, int]:
    """One query scan: its mask (``--z-range`` or the label-free rule), written with its volume
    and overlay; the result and the number of slices encoded."""
    req, card, plan = session.plan.request, session.plan.card, session.plan
    scan = prepare_query(read_image(path), card, preprocessed=req.preprocessed, name=query_stem(path))
    normalise_prepared(scan, card, session.stats)
    if req.z_range is not None:
        rng = range_to_training(scan, req.z_range)
        bar.total += rng[1] - rng[0] + 1
        bar.refresh()
        mask = _predict_range(session.model, session.support, scan, rng, plan, session.device, bar,
                              session.one_at_a_time)
        how, used, n_enc = "z-range", rng, rng[1] - rng[0] + 1
    else:
        bar.total += scan.n_slices
        bar.refresh()
        chosen = label_free_mask(session.every_part(scan.image, bar.update), req.rule, session.evidence,
                                 np.moveaxis(scan.image, -1, 0))
        mask, used = chosen.mask, chosen.extent
        how, n_enc = f"label-free {chosen.how}", scan.n_slices
        if not chosen.found:
            log.warning("%s: label %d not found, its mask is empty (%s)", scan.name, req.label, chosen.how)
    target = Path(req.out) / mask_name(path, req.label)
    written = write_mask(mask, scan, req.label, target)
    voxels, ml = mask_volume_ml(written)
    png = None
    if req.overlay_slices > 0:
        png = _overlay(session.support, session.sup, scan, mask, req.label, req.overlay_slices,
                       target.with_name(target.name[: -len(".nii.gz")] + ".png"))
    log.info("%s: %d voxels, %.1f mL (%s)", target, voxels, ml, how)
    return QueryResult(path, target, png, int(req.label), voxels, ml, scan.n_slices, used, how), n_enc


def segment_planned(plan: Plan, model: torch.nn.Module | None = None, *,
                    progress: bool = True, one_at_a_time: bool = False) -> SegmentReport:
    """Run a checked request (:func:`util.segment.inputs.preflight`); ``model`` (eval mode, on
    ``plan.request.device``) replaces the one built from the checkpoint (benchmarks).

    ``one_at_a_time`` runs the original inference instead (the support images encoded again
    for every query slice and part, ``util.validation.protocol.forward_one_slice``): same masks, slower;
    ``python -m benchmarks.segment`` times the two."""
    start = time.perf_counter()
    with autocast(torch.device(plan.request.device), plan.request.precision):
        session = _open_session(plan, model, one_at_a_time)
        _calibrate(session)
        results, encoded = _segment_queries(session, progress)
    csv_path = write_csv(results, Path(plan.request.out) / csv_name(plan.request.label))
    support_z = [p.slices[0][1] for p in session.support.parts]
    return SegmentReport(results, csv_path, support_z, plan.checkpoint.npart + session.calibration_encoded,
                         encoded, time.perf_counter() - start)


def _segment_queries(session: _Session, progress: bool) -> tuple[list[QueryResult], int]:
    """Every query of the plan, under one progress bar; the results and the slices encoded."""
    results: list[QueryResult] = []
    encoded = 0
    with tqdm(total=0, unit="slice", desc="segment", disable=not progress) as bar:
        for path in session.plan.queries:
            result, n_enc = _segment_query(session, path, bar)
            results.append(result)
            encoded += n_enc
    return results, encoded


def write_csv(results: list[QueryResult], target: Path) -> Path:
    """One line per query (``CSV_FIELDS``), written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in results:
        rng = "" if r.predicted_range is None else f"{r.predicted_range[0]}-{r.predicted_range[1]}"
        writer.writerow([str(r.query), r.mask.name, r.label, r.voxels, f"{r.volume_ml:.3f}",
                         r.training_slices, rng, r.how])
    return atomic_write_text(buf.getvalue(), target)


def segment(request: SegmentRequest, *, model: torch.nn.Module | None = None,
            progress: bool = True, one_at_a_time: bool = False) -> SegmentReport:
    """Check ``request`` completely, then segment every query (module docstring).

    Raises:
        FileNotFoundError / ValueError: every problem of the request at once, before anything
            is built or written (see ``preflight``).
    """
    return segment_planned(preflight(request), model, progress=progress, one_at_a_time=one_at_a_time)
