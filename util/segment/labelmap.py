"""Several organs in one call of ``segment.py`` (docs/segment.md, 'Several organs'): every
organ's request is checked before anything is written, the network is built once, each organ
is segmented as alone (its own files), and with ``--label-map`` one label map per query holds
them all: ``<query stem>_labels.nii.gz``, value C inside organ C, in the query's own grid.

Where two organs' masks overlap, the voxel keeps the organ listed first in ``--label`` (the
count of such voxels is logged and returned).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from util.io import atomic_write_sitk, read_image
from util.segment.checkpoint_info import build_segmenter
from util.segment.inputs import SegmentRequest, preflight, query_stem
from util.segment.run import SegmentReport, segment_planned

__all__ = ["LABEL_MAP_SUFFIX", "label_map_name", "merge_masks", "OrgansReport", "segment_organs"]

log = logging.getLogger(__name__)

LABEL_MAP_SUFFIX = "_labels.nii.gz"


def label_map_name(query: str | Path) -> str:
    """``<query stem>_labels.nii.gz``."""
    return f"{query_stem(query)}{LABEL_MAP_SUFFIX}"


def merge_masks(masks: Sequence[tuple[int, str | Path]], target: str | Path) -> tuple[Path, int]:
    """One label map from per-organ masks of one grid: value ``c`` where organ ``c``'s mask is
    non-zero, the first listed organ where masks overlap.

    Args:
        masks: (label, mask file) in priority order; all in the same grid.
    Returns:
        (the written file, the number of voxels claimed by more than one organ).
    Raises:
        ValueError: the masks are not in one grid (names both files).
    """
    first_label, first_path = masks[0]
    ref = read_image(first_path)
    out = np.zeros(sitk.GetArrayViewFromImage(ref).shape, dtype=np.uint8)
    claimed = np.zeros(out.shape, dtype=np.uint8)
    for label, path in masks:
        img = read_image(path) if Path(path) != Path(first_path) else ref
        if img.GetSize() != ref.GetSize() or not np.allclose(img.GetSpacing(), ref.GetSpacing()):
            raise ValueError(f"{path} and {first_path}: masks of different grids cannot share a label map")
        inside = sitk.GetArrayViewFromImage(img) != 0
        out[inside & (out == 0)] = np.uint8(label)
        claimed += inside.astype(np.uint8)
    merged = sitk.GetImageFromArray(out)
    merged.CopyInformation(ref)
    return atomic_write_sitk(merged, target), int(np.count_nonzero(claimed > 1))


@dataclasses.dataclass
class OrgansReport:
    """Each organ's report, and the label maps written (one per query, empty without
    ``label_map``) with their contested voxel counts."""
    reports: list[SegmentReport]
    label_maps: list[tuple[Path, int]]

    def summary(self) -> str:
        lines = [r.summary() for r in self.reports]
        lines += [f"{path.name}: every organ in one label map ({overlap} voxel(s) claimed by two "
                  "organs kept the first listed)" if overlap else f"{path.name}: every organ in one label map"
                  for path, overlap in self.label_maps]
        return "\n".join(lines)


def segment_organs(request: SegmentRequest, labels: Sequence[int], *, label_map: bool,
                   progress: bool = True) -> OrgansReport:
    """Segment organ after organ (``request`` with each label), with one network.

    Raises:
        FileNotFoundError / ValueError: a problem of any organ's request, before anything is
            built or written (``preflight``); masks of different grids (``merge_masks``).
    """
    labels = [int(c) for c in labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--label {' '.join(map(str, labels))}: an organ is named twice")
    plans = [preflight(dataclasses.replace(request, label=c)) for c in labels]
    model = build_segmenter(plans[0].checkpoint, request.device)
    reports = [segment_planned(plan, model, progress=progress) for plan in plans]
    maps: list[tuple[Path, int]] = []
    if label_map:
        for i, query in enumerate(plans[0].queries):
            masks = [(rep.results[i].label, rep.results[i].mask) for rep in reports]
            path, overlap = merge_masks(masks, Path(request.out) / label_map_name(query))
            if overlap:
                log.warning("%s: %d voxel(s) predicted for two organs keep the first listed (%s)",
                            path.name, overlap, labels)
            maps.append((path, overlap))
    return OrgansReport(reports, maps)
