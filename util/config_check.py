"""One check of an experiment's config before any work (STYLE.md §1 "reject incompatible
options first, naming the fix"), shared by ``training.py`` and ``validation.py``.

``check_config(cfg)`` loads the dataset card (unknown dataset: the error lists the cards) and
calls ``validate_config(cfg, card)``, which refuses out-of-range keys, incompatible options and
missing data files, naming the key, the file and the command that creates it. It reads folder
listings only, no volumes.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping

from data.cards import Card, base_name, is_superpix, load_card
from dataloaders.augment import AUG_PRESETS
from dataloaders.folds import (check_label_list, n_folds, scan_ids_in, split_fold,
                               support_scan_ids, test_labels)

__all__ = ["ConfigSummary", "check_config", "validate_config", "data_dir_of", "PRECISIONS",
           "OPTIM_TYPES"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
OPTIM_TYPES = ("sgd",)
POSITIVE_KEYS = ("batch_size", "print_interval", "save_snapshot_every", "max_iters_per_load")


@dataclasses.dataclass(frozen=True)
class ConfigSummary:
    """What the check established: the data folder, all scans, the fold split, test labels."""
    card: Card
    data_dir: Path
    scan_ids: list[int]
    val_ids: list[int]
    train_ids: list[int]
    test_labels: list[int]
    support_ids: list[int]


def data_dir_of(cfg: Mapping[str, Any], key: str) -> Path:
    """``path.<key>.data_dir`` of the config.

    Raises:
        ValueError: the key is missing (names the config entry to set).
    """
    entry = cfg.get("path", {}).get(key)
    if not isinstance(entry, Mapping) or not entry.get("data_dir"):
        raise ValueError(f"path.{key}.data_dir is not set: pass 'path.{key}.data_dir=DIR' "
                         f"(the preprocessed {base_name(key)} folder)")
    return Path(entry["data_dir"])


def _fail(msg: str) -> ValueError:
    return ValueError(f"bad config: {msg}")


def _check_options(cfg: Mapping[str, Any], card: Card, training: bool) -> None:
    if cfg["which_aug"] not in AUG_PRESETS:
        raise _fail(f"which_aug={cfg['which_aug']!r} is not a preset; choose one of {sorted(AUG_PRESETS)}")
    if cfg.get("precision", "fp32") not in PRECISIONS:
        raise _fail(f"precision={cfg.get('precision')!r}: choose one of {list(PRECISIONS)}")
    if cfg["optim_type"] not in OPTIM_TYPES:
        raise _fail(f"optim_type={cfg['optim_type']!r}: only {list(OPTIM_TYPES)} is implemented")
    task = cfg["task"]
    if int(task["n_ways"]) != 1:
        raise _fail(f"task.n_ways={task['n_ways']}: episodes are 1-way (one pseudolabel or organ)")
    if int(task["n_shots"]) < 1:
        raise _fail(f"task.n_shots={task['n_shots']} must be >= 1")
    if int(task["n_queries"]) != 1:
        raise _fail(f"task.n_queries={task['n_queries']}: FewShotSeg takes one query per episode")
    for key in POSITIVE_KEYS:
        if int(cfg[key]) < 1:
            raise _fail(f"{key}={cfg[key]} must be >= 1")
    if training and int(cfg["n_steps"]) < 1:
        raise _fail(f"n_steps={cfg['n_steps']} must be >= 1")
    try:
        int(cfg["min_fg_data"])
    except (TypeError, ValueError):
        raise _fail(f"min_fg_data={cfg['min_fg_data']!r} must be an integer (classmap_<N>.json)") from None
    if is_superpix(cfg["dataset"]) and cfg["superpix_scale"] not in card.superpixel:
        raise _fail(f"superpix_scale={cfg['superpix_scale']!r}: dataset {card.name} has scales "
                    f"{sorted(card.superpixel)} (card {card.path})")
    if cfg.get("resume") and cfg.get("reload_model_path"):
        raise _fail("resume=True continues this experiment from its own snapshot; "
                    "reload_model_path starts from other weights: set only one of them")
    if cfg.get("resume") and cfg.get("resume_from"):
        raise _fail("set either resume=True (newest snapshot of this experiment) or "
                    "resume_from=PATH, not both")
    if cfg.get("resume_from") and cfg.get("reload_model_path"):
        raise _fail("resume_from continues from a snapshot; reload_model_path starts from other "
                    "weights: set only one of them")
    reload = cfg.get("reload_model_path")
    if training and reload is not None and not isinstance(reload, str):
        raise _fail(f"reload_model_path={reload!r}: training starts from one checkpoint file")
    if training and reload and not Path(reload).is_file():
        raise FileNotFoundError(f"reload_model_path={reload}: no such checkpoint file")
    if cfg.get("resume_from") and not Path(cfg["resume_from"]).is_file():
        raise FileNotFoundError(f"resume_from={cfg['resume_from']}: no such snapshot file")


def _require(path: Path, how: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {how}")


def _check_files(cfg: Mapping[str, Any], card: Card, data_dir: Path, train_ids: list[int],
                 val_ids: list[int], training: bool) -> None:
    prepare = (f"create it with `python -m data.prepare --dataset {card.name} --raw RAW_DIR "
               f"--out {data_dir}`")

    def classmap_hint(tp: int) -> str:
        return (f"create it with `python -m data.class_index --dataset {card.name} "
                f"--data-dir {data_dir} --min-tp {tp}`")

    if training and is_superpix(cfg["dataset"]):
        scale = cfg["superpix_scale"]
        for sid in train_ids:
            _require(data_dir / card.file("superpix", id=sid, scale=scale),
                     f"create it with `python -m data.pseudolabels --dataset {card.name} "
                     f"--data-dir {data_dir} --scale {scale}`")
    elif training:
        for sid in train_ids:
            _require(data_dir / card.file("label", id=sid), prepare)
        tp = int(cfg["min_fg_data"])
        _require(data_dir / card.file("classmap", min_tp=tp), classmap_hint(tp))
    else:
        for sid in val_ids:
            _require(data_dir / card.file("label", id=sid), prepare)
    if training and list(cfg["exclude_cls_list"]):
        _require(data_dir / card.file("classmap", min_tp=1), classmap_hint(1))


def validate_config(cfg: Mapping[str, Any], card: Card, *, check_files: bool = True) -> ConfigSummary:
    """Refuse a config that cannot work, before any work.

    Args:
        cfg: the Sacred config (``_config``); ``mode`` 'train' checks training inputs, else the
            validation inputs.
        card: the dataset's card (``load_card(cfg['dataset'])``).
        check_files: also require the data files the run will read.
    Returns:
        the data folder, scans, fold split, test labels and support scans.
    Raises:
        ValueError: an option out of range or incompatible (naming the key and the fix).
        FileNotFoundError: a missing data folder, snapshot or file (naming the command that
            creates it).
    """
    training = cfg.get("mode", "train") == "train"
    _check_options(cfg, card, training)
    check_label_list(card, cfg["exclude_cls_list"], "exclude_cls_list")
    labels = test_labels(card, cfg["label_sets"])
    key = cfg["dataset"] if training else base_name(cfg["dataset"])
    if not training and key not in cfg.get("path", {}):
        key = cfg["dataset"]
    data_dir = data_dir_of(cfg, key)
    ids = scan_ids_in(card, data_dir)
    if not 0 <= int(cfg["eval_fold"]) < n_folds(card, len(ids)):
        raise _fail(f"eval_fold={cfg['eval_fold']} is out of range: dataset {card.name} has "
                    f"{n_folds(card, len(ids))} folds (0..{n_folds(card, len(ids)) - 1})")
    val_ids, train_ids = split_fold(card, ids, int(cfg["eval_fold"]), int(cfg["task"]["n_shots"]))
    supports = support_scan_ids(val_ids, list(cfg["support_idx"]))
    if training and not train_ids:
        raise _fail(f"eval_fold={cfg['eval_fold']} leaves no training scan in {data_dir}")
    if check_files:
        _check_files(cfg, card, data_dir, train_ids, val_ids, training)
    return ConfigSummary(card, data_dir, ids, val_ids, train_ids, labels, supports)


def check_config(cfg: Mapping[str, Any], *, check_files: bool = True) -> ConfigSummary:
    """``validate_config`` with the card of ``cfg['dataset']`` (unknown dataset: ValueError)."""
    return validate_config(cfg, load_card(cfg["dataset"]), check_files=check_files)
