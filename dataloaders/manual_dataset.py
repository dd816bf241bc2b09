"""The manual-label episode dataset: the supervised baseline (dataset names without
``_Superpix``; docs/method.md, 'Supervised baseline').

Episode ``g`` of a rank, all draws from ``SeedSequence([seed, g, rank])``: one class uniformly
from the classes allowed in training, then ``n_shots + n_queries`` different slices holding it
(class-slice index ``classmap_<min_fg_data>.json``) drawn from the training scans; supports
first, then queries, each augmented with the slice's binary mask of that class.

Classes allowed in training: the card's ``pa_all`` without the tested organs of ``label_sets``
and without ``exclude_cls_list``. Setting 2 (``exclude_cls_list`` not empty) also drops every
slice that holds an excluded organ (``classmap_1.json``), as the superpixel dataset does.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from data.cards import Card
from dataloaders.augment import augment_pair, get_preset
from dataloaders.episodes import make_episode
from dataloaders.folds import check_label_list, excluded_slices
from dataloaders.scans import fold_norm_stats, load_classmap, load_scan
from util.rng import episode_generator

__all__ = ["ManualLabelDataset", "training_classes", "class_slices"]

log = logging.getLogger(__name__)

EXCLUSION_CLASSMAP_TP = 1   # setting 2 excludes by classmap_1.json
N_MASK_CLASSES = 2          # binary mask of the episode's class


def training_classes(card: Card, test_labels: Sequence[int], exclude_cls_list: Sequence[int]) -> list[int]:
    """``pa_all`` minus the tested and the excluded organs, sorted."""
    check_label_list(card, exclude_cls_list, "exclude_cls_list")
    return sorted(set(card.pa_all) - set(int(x) for x in test_labels)
                  - set(int(x) for x in exclude_cls_list))


def class_slices(card: Card, classmap: dict, classes: Sequence[int], scan_ids: Sequence[int],
                 excluded: dict[int, set[int]]) -> dict[int, list[tuple[int, int]]]:
    """``{class: [(scan id, z), ...]}`` of the training slices holding each class, in scan then
    slice order, without the excluded slices."""
    out: dict[int, list[tuple[int, int]]] = {}
    for c in classes:
        per_scan = classmap.get(card.labels[c], {})
        out[c] = [(int(sid), int(z)) for sid in scan_ids for z in sorted(per_scan.get(str(sid), []))
                  if int(z) not in excluded.get(int(sid), set())]
    return out


class ManualLabelDataset(Dataset):
    """Episodes from manual labels; ``dataset[g]`` is episode ``g`` (see module doc).

    Args:
        card, data_dir, scan_ids: the dataset, its folder and the training scans.
        seed, rank: the randomness of every episode (with its index).
        min_fg_data: which class map (``classmap_<min_fg_data>.json``) lists the slices.
        test_labels: organs tested in this label set (never trained on).
        exclude_cls_list: setting 2 organs (their classes and slices are left out).
        max_iters_per_load: sub-epoch length (``len``; only for the reload message).
        which_aug, n_shots, n_queries: augmentation preset and copies per episode.
    Raises:
        FileNotFoundError: a missing data folder, scan or class map (naming the command).
        ValueError: no class has enough slices for an episode.
    """

    def __init__(self, card: Card, data_dir: str | Path, scan_ids: Sequence[int], *, seed: int,
                 rank: int = 0, min_fg_data: int | str = 100, test_labels: Sequence[int] = (),
                 exclude_cls_list: Sequence[int] = (), max_iters_per_load: int = 1000,
                 which_aug: str = "sabs_aug", n_shots: int = 1, n_queries: int = 1) -> None:
        self.card = card
        self.data_dir = Path(data_dir)
        self.scan_ids = [int(s) for s in scan_ids]
        self.seed, self.rank = int(seed), int(rank)
        self.aug = get_preset(which_aug)
        self.n_shots, self.n_queries = int(n_shots), int(n_queries)
        self.max_iters_per_load = int(max_iters_per_load)
        classes = training_classes(card, test_labels, exclude_cls_list)
        classmap = load_classmap(card, self.data_dir, int(min_fg_data))
        excl: dict[int, set[int]] = {}
        if list(exclude_cls_list):
            excl = excluded_slices(card, load_classmap(card, self.data_dir, EXCLUSION_CLASSMAP_TP),
                                   exclude_cls_list)
        pools = class_slices(card, classmap, classes, self.scan_ids, excl)
        need = self.n_shots + self.n_queries
        short = [c for c in classes if len(pools[c]) < need]
        if short:
            log.warning("classes %s have fewer than %d training slices in %s: not trained on",
                        [card.labels[c] for c in short], need, self.data_dir)
        self.classes = [c for c in classes if c not in short]
        if not self.classes:
            raise ValueError(f"{self.data_dir}: no class of {[card.labels[c] for c in classes]} has "
                             f"{need} training slices in classmap_{int(min_fg_data)}.json "
                             f"(scans {self.scan_ids}, exclude_cls_list={list(exclude_cls_list)})")
        self.pools = {c: pools[c] for c in self.classes}
        self.stats = fold_norm_stats(card, self.data_dir, self.scan_ids)
        used = sorted({sid for c in self.classes for sid, _ in self.pools[c]})
        self.scans = {sid: load_scan(card, self.data_dir, sid, stats=self.stats, label=True)
                      for sid in used}
        log.info("manual-label dataset %s: classes %s, slices per class %s, %d scans", card.name,
                 [card.labels[c] for c in self.classes], [len(self.pools[c]) for c in self.classes],
                 len(used))

    def __len__(self) -> int:
        """Episodes per sub-epoch; any index is valid."""
        return self.max_iters_per_load

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.episode(int(index))

    def episode(self, index: int) -> dict[str, Any]:
        """Episode ``index`` (see :func:`dataloaders.episodes.make_episode` for the layout)."""
        rng = episode_generator(self.seed, index, self.rank)
        cls = self.classes[int(rng.integers(len(self.classes)))]
        pool = self.pools[cls]
        picks = rng.choice(len(pool), size=self.n_shots + self.n_queries, replace=False)
        images, masks = [], []
        for p in picks:
            sid, z = pool[int(p)]
            scan = self.scans[sid]
            img, lab = augment_pair(scan.image[..., z], (scan.label[..., z] == cls).astype(np.int64),
                                    N_MASK_CLASSES, self.aug, rng)
            images.append(img)
            masks.append(lab)
        first_sid, first_z = pool[int(picks[0])]
        return make_episode(images, masks, self.n_shots, scan_id=first_sid, z_id=first_z,
                            class_id=cls, empty_mask=not bool(masks[0].any()), index=int(index),
                            epoch=int(index) // self.max_iters_per_load)
