"""The training set a config asks for (docs/training.md): the superpixel dataset of the
self-supervised runs (``<CARD>_Superpix``) or the manual-label dataset of the supervised baseline
(``<CARD>``)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch.utils.data import Dataset

from data.cards import Card, is_superpix
from dataloaders.folds import test_labels
from dataloaders.manual_dataset import ManualLabelDataset
from dataloaders.superpix_dataset import SuperpixelDataset

__all__ = ["build_training_dataset"]


def build_training_dataset(cfg: Mapping[str, Any], card: Card, *, data_dir: str, train_ids: Sequence[int],
                           rank: int) -> Dataset:
    """The superpixel dataset (``<CARD>_Superpix``) or the manual-label dataset (``<CARD>``)."""
    common = dict(seed=int(cfg["seed"]), rank=int(rank), which_aug=cfg["which_aug"],
                  exclude_cls_list=list(cfg["exclude_cls_list"]),
                  max_iters_per_load=int(cfg["max_iters_per_load"]),
                  n_shots=int(cfg["task"]["n_shots"]), n_queries=int(cfg["task"]["n_queries"]))
    if is_superpix(cfg["dataset"]):
        return SuperpixelDataset(card, data_dir, train_ids, superpix_scale=cfg["superpix_scale"],
                                 scan_per_load=int(cfg["scan_per_load"]),
                                 redraw_empty_superpix=bool(cfg["redraw_empty_superpix"]), **common)
    return ManualLabelDataset(card, data_dir, train_ids, min_fg_data=cfg["min_fg_data"],
                              test_labels=test_labels(card, cfg["label_sets"]), **common)
