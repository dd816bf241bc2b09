"""The scans of one validation fold (docs/method.md, 'Validation protocol'): support and query
scans with their labels, loaded in the main process (no forked DataLoader workers, so nothing
can hang; ``num_workers`` > 0 reads scans in that many threads).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from data.cards import Card, scan_ids_in
from dataloaders.folds import split_fold, support_scan_ids, test_labels
from dataloaders.scans import NormStats, Scan, fold_norm_stats, load_scan

__all__ = ["ValidationSet", "choose_support_ids", "load_validation_set", "read_record"]

log = logging.getLogger(__name__)

DEFAULT_SUPPORT_IDX = (-1,)      # the original default: the last scan of the validation list


@dataclasses.dataclass
class ValidationSet:
    """One fold's validation scans; ``queries`` in validation-list order, support excluded."""
    card: Card
    data_dir: Path
    fold: int
    val_ids: list[int]
    support_ids: list[int]
    query_ids: list[int]
    labels: list[int]                         # test organs, ascending
    support: list[Scan]
    queries: list[Scan]
    stats: NormStats | None = None


def choose_support_ids(val_ids: Sequence[int], support_idx: Sequence[int], n_shots: int, *,
                       where: str = "this fold") -> list[int]:
    """Support scans, all from the fold's validation scans ``val_ids``, leaving at least one of
    them a query: ``support_idx`` when it names ``n_shots`` scans; the default ``[-1]`` with
    ``n_shots`` > 1 takes the last ``n_shots`` scans of the validation list.

    Args:
        where: names the fold in messages (``fold 0 of CHAOST2``).
    Raises:
        ValueError: ``n_shots`` < 1 or more than the fold allows (``len(val_ids) - 1``, said in
            the message), an index out of range, repeated scans, or a ``support_idx`` whose
            length differs from ``n_shots``.
    """
    n_shots = int(n_shots)
    if n_shots < 1:
        raise ValueError(f"task.n_shots={n_shots}: need at least one support scan")
    allowed = len(val_ids) - 1
    if n_shots > allowed:
        raise ValueError(f"task.n_shots={n_shots}: {where} has {len(val_ids)} validation scans "
                         f"{list(val_ids)}; the supports come from them and at least one stays a "
                         f"query, so it allows at most {allowed} shot(s) (task.n_shots=1..{allowed})")
    idx = [int(i) for i in support_idx]
    if len(idx) != n_shots:
        if tuple(idx) == DEFAULT_SUPPORT_IDX:
            idx = list(range(-n_shots, 0))
        else:
            raise ValueError(f"support_idx={idx} names {len(idx)} support scan(s) but task.n_shots="
                             f"{n_shots}: give {n_shots} indices into the validation list {list(val_ids)}")
    ids = support_scan_ids(val_ids, idx)
    if len(set(ids)) != len(ids):
        raise ValueError(f"support_idx={idx} names scan(s) twice: {ids}")
    return ids


def read_record(card: Card, data_dir: str | Path, scan_id: int) -> dict[str, Any] | None:
    """The preprocessing record ``record_<id>.json`` of a scan, or None when there is none.

    Raises:
        ValueError: the file exists but is not valid JSON.
    """
    path = Path(data_dir) / card.file("record", id=scan_id)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def load_validation_set(card: Card, data_dir: str | Path, *, fold: int, label_sets: int,
                        support_idx: Sequence[int] = DEFAULT_SUPPORT_IDX, n_shots: int = 1,
                        stats_dir: str | Path | None = None, num_workers: int = 0) -> ValidationSet:
    """Split the fold, choose the support, read every validation scan with its label.

    Args:
        card: the base dataset's card (validation scores manual labels).
        data_dir: folder of the preprocessed scans (``path.<base>.data_dir``).
        stats_dir: folder for the fold-global CT statistics (``path.<dataset>.data_dir``;
            default ``data_dir``).
        num_workers: threads reading scans (0: one after the other in this thread).
    Raises:
        ValueError: ``eval_fold``, ``label_sets`` or ``support_idx`` out of range.
        FileNotFoundError: a missing image or ``label_<id>`` file (named).
    """
    data_dir = Path(data_dir)
    labels = test_labels(card, label_sets)
    ids = scan_ids_in(card, data_dir)
    # the fold's validation scans do not grow with n_shots: the supports come from them
    # (docs/validation.md, 'Several shots'), never from the scans the network trained on
    val_ids, train_ids = split_fold(card, ids, fold)
    support_ids = choose_support_ids(val_ids, support_idx, n_shots,
                                     where=f"fold {fold} of {card.name}")
    query_ids = [i for i in val_ids if i not in support_ids]
    stats = fold_norm_stats(card, stats_dir or data_dir, train_ids)

    def read(sid: int) -> Scan:
        return load_scan(card, data_dir, sid, stats=stats, label=True)

    order = support_ids + query_ids
    if num_workers > 0:
        with concurrent.futures.ThreadPoolExecutor(max_workers=int(num_workers)) as pool:
            scans = list(pool.map(read, order))
    else:
        scans = [read(sid) for sid in order]
    log.info("fold %d of %s: support %s, queries %s, test labels %s", fold, card.name, support_ids,
             query_ids, [f"{c} {card.labels[c]}" for c in labels])
    return ValidationSet(card, data_dir, int(fold), val_ids, support_ids, query_ids, labels,
                         scans[: len(support_ids)], scans[len(support_ids):], stats)
