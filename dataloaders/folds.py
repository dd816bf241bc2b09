"""Folds, label groups and setting-2 exclusion, computed from a dataset card
(docs/method.md, 'Datasets, labels and folds').

Training and validation both use this module, so they always agree on which scans and organs
belong to which fold.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from data.cards import N_DEFAULT_FOLDS, Card

__all__ = ["fold_separators", "n_folds", "split_fold", "test_labels",
           "check_label_list", "excluded_slices", "support_scan_ids"]


def fold_separators(card: Card, n_scans: int) -> tuple[int, ...]:
    """The card's separators, or five near-equal folds derived from the scan count."""
    if card.fold_separators is not None:
        return card.fold_separators
    return tuple((i * n_scans) // N_DEFAULT_FOLDS for i in range(N_DEFAULT_FOLDS + 1))


def n_folds(card: Card, n_scans: int) -> int:
    return len(fold_separators(card, n_scans)) - 1


def split_fold(card: Card, scan_ids: Sequence[int], fold: int, n_shots: int = 1
               ) -> tuple[list[int], list[int]]:
    """Validation and training ids of ``fold``.

    Scan ids sorted numerically form a circular list P; the validation ids are
    ``P[sep[fold] : sep[fold + 1] + n_shots]`` wrapping around the end (the last ``n_shots`` of
    them are the support candidates), the training ids all the others.

    Raises:
        ValueError: ``fold`` out of range, or separators beyond the number of scans.
    """
    ids = sorted(int(i) for i in scan_ids)
    seps = fold_separators(card, len(ids))
    if not 0 <= fold < len(seps) - 1:
        raise ValueError(f"eval_fold={fold} is out of range: dataset {card.name} has "
                         f"{len(seps) - 1} folds (0..{len(seps) - 2})")
    if seps[-1] > len(ids):
        raise ValueError(f"dataset card {card.path}: fold separators {list(seps)} need "
                         f"{seps[-1]} scans, found {len(ids)}")
    start, stop = seps[fold], seps[fold + 1]
    n_val = min(stop - start + n_shots, len(ids))
    val = [ids[(start + j) % len(ids)] for j in range(n_val)]
    train = [i for i in ids if i not in set(val)]
    return val, train


def check_label_list(card: Card, labels: Iterable[int], key: str) -> list[int]:
    """Each label must be a class of the card (1..n_classes-1); returns them as ints."""
    out = [int(x) for x in labels]
    bad = [x for x in out if not 0 < x < card.n_classes]
    if bad:
        names = ", ".join(f"{i} {n}" for i, n in enumerate(card.labels) if i)
        raise ValueError(f"{key}={out}: label(s) {bad} not in dataset {card.name} ({names})")
    return out


def test_labels(card: Card, label_sets: int) -> list[int]:
    """Organs tested in ``label_sets``: ``pa_all - groups[label_sets]``, sorted."""
    if not 0 <= int(label_sets) < len(card.groups):
        raise ValueError(f"label_sets={label_sets} is out of range: dataset {card.name} has "
                         f"{len(card.groups)} label groups (0..{len(card.groups) - 1})")
    return sorted(set(card.pa_all) - set(card.groups[int(label_sets)]))


def excluded_slices(card: Card, classmap: Mapping[str, Mapping[str, Sequence[int]]],
                    exclude_cls_list: Iterable[int]) -> dict[int, set[int]]:
    """Setting 2: ``{scan id: slices holding any excluded organ}`` from ``classmap_1.json``."""
    out: dict[int, set[int]] = {}
    for lab in check_label_list(card, exclude_cls_list, "exclude_cls_list"):
        for sid, zs in classmap.get(card.labels[lab], {}).items():
            out.setdefault(int(sid), set()).update(int(z) for z in zs)
    return out


def support_scan_ids(val_ids: Sequence[int], support_idx: Sequence[int]) -> list[int]:
    """Support scans chosen by ``support_idx`` (indices into the validation list)."""
    out = []
    for i in support_idx:
        if not -len(val_ids) <= int(i) < len(val_ids):
            raise ValueError(f"support_idx={list(support_idx)}: index {i} out of range for the "
                             f"{len(val_ids)} validation scans {list(val_ids)}")
        out.append(int(val_ids[int(i)]))
    return out
