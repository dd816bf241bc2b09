"""Validation's figures (docs/validation.md, 'Figures'): per test organ, the support slices of
every part (organ contour) and, for the first query scan holding the organ, one slice per part
with the ground-truth and predicted contours, drawn with the panels of ``util.figures``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dataloaders.validation_set import ValidationSet
from util.figures import plot_support_query
from util.validation.protocol import assign_parts, organ_z_range
from util.validation.result import SnapshotResult

__all__ = ["validation_figures", "FIGURE_DIR"]

FIGURE_DIR = "figures"


def validation_figures(res: SnapshotResult, vset: ValidationSet, out_dir: str | Path) -> list[Path]:
    """``<out_dir>/label_<c>_<NAME>.png`` per test organ: support slices of every part and shot,
    and one slice per part (the middle of its counted slices) of the first query scan holding the
    organ; each slice turned to radiological display by its scan's direction matrix."""
    direction = {scan.scan_id: scan.geometry.GetDirection() for scan in [*vset.support, *vset.queries]}
    out = []
    for c in res.labels:
        support = res.supports[c]
        n_shots = support.parts[0].features.shape[0]
        sup_rows = [[(f"support {part.slices[s][0]} z={part.slices[s][1]} (part {i})",
                      part.images[s], part.fg[s].cpu().numpy() > 0.5, direction[part.slices[s][0]])
                     for i, part in enumerate(support.parts)] for s in range(n_shots)]
        query_row = []
        for scan in vset.queries:
            rng = organ_z_range(scan.label, c)
            if rng is None or (scan.scan_id, c) not in res.preds:
                continue
            zs = np.arange(rng[0], rng[1] + 1)
            parts = assign_parts(zs, rng[0], rng[1], support.npart)
            pred = res.preds[(scan.scan_id, c)]
            for i in range(support.npart):
                in_part = zs[parts == i]
                if in_part.size:
                    z = int(in_part[in_part.size // 2])
                    query_row.append((f"query {scan.scan_id} z={z} (part {i})", scan.image[..., z],
                                      scan.label[..., z] == c, pred[z], direction[scan.scan_id]))
            break
        name = vset.card.labels[c]
        step = "" if res.step is None else f", step {res.step}"
        out.append(plot_support_query(sup_rows, query_row, f"label {c} {name}{step}",
                                      Path(out_dir) / f"label_{c}_{name}.png"))
    return out
