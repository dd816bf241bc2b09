"""The result of validating one snapshot: the tables the protocol computed, its predictions and
supports, shared by the run, its outputs and its figures."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from util.metric import reduce_raw
from util.validation.protocol import Support

__all__ = ["SnapshotResult"]


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
        """(class means, class stds, overall mean, its std) of a scans x labels table, the
        invalid pairs left out (``util.metric.reduce_raw``)."""
        return reduce_raw(table, self.valid)
