"""One check of an experiment's config before any work (docs/training.md, "Mistakes and exit
codes"), shared by ``training.py`` and ``validation.py``.

``check_config(cfg)`` loads the dataset card (unknown dataset: the error lists the cards) and
calls ``validate_config(cfg, card)``, which refuses out-of-range keys, incompatible options and
missing data files, naming the key, the file and the command that creates it. It reads folder
listings only, no volumes. ``check_run(cfg, mode)`` adds what a run needs besides the data: the
checkpoint files it reads and the pretrained weights it starts from. Every refusal is a
:class:`util.user_errors.UserError`, which the entry points print as one ``error:`` line.

One data folder per dataset: ``path.<CARD>_Superpix.data_dir`` (superpixel training) and
``path.<CARD>.data_dir`` (manual labels, validation) name the same prepared folder, so training
and validation accept the same arguments. A key left at the card's default follows the other;
two given keys that differ are refused (:func:`resolve_data_dir`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from data.cards import SUPERPIX_SUFFIX, Card, base_name, is_superpix, load_card, scan_ids_in
from dataloaders.augment import AUG_PRESETS
from dataloaders.folds import check_label_list, n_folds, split_fold, support_scan_ids, test_labels
from dataloaders.validation_set import choose_support_ids
from util.backends import PRECISIONS, compile_problem
from util.io import CorruptImageError, verify_image_files
from util.tensorboard_log import TENSORBOARD_KEY, tensorboard_problem
from util.user_errors import MissingInputError, UserError, require_checkpoint

__all__ = ["ConfigSummary", "check_config", "check_run", "validate_config", "resolve_data_dir",
           "unified_data_dirs", "PRECISIONS", "OPTIM_TYPES"]

log = logging.getLogger(__name__)

OPTIM_TYPES = ("sgd",)
POSITIVE_KEYS = ("batch_size", "print_interval", "save_snapshot_every", "max_iters_per_load")
INT_KEYS = ("seed", "n_steps", "batch_size", "print_interval", "save_snapshot_every",
            "max_iters_per_load", "scan_per_load", "label_sets", "eval_fold", "num_workers",
            "z_margin", "val_wsize", "n_sup_part", "val_batch_size", "proto_grid_size")


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
    data_key: str = ""                          # the config key the data folder was read from


def _dir_entry(cfg: Mapping[str, Any], name: str) -> str | None:
    entry = cfg.get("path", {}).get(name)
    if isinstance(entry, Mapping) and entry.get("data_dir"):
        return str(entry["data_dir"])
    return None


def _same_dir(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def resolve_data_dir(cfg: Mapping[str, Any], card: Card | None = None) -> tuple[str, Path]:
    """The data folder of ``cfg['dataset']`` and the config key it comes from.

    ``path.<CARD>_Superpix.data_dir`` and ``path.<CARD>.data_dir`` name one folder: a key equal
    to the card's default ``data_dir`` (or absent) follows the other one.

    Returns:
        (``'path.<name>.data_dir'``, folder).
    Raises:
        UserError: both keys are given and differ (names both keys and values), or neither is set.
    """
    dataset = str(cfg["dataset"])
    base = base_name(dataset)
    names = [dataset] + [n for n in (base + SUPERPIX_SUFFIX, base) if n != dataset]
    default = card.data_dir if card is not None else None
    values = {n: _dir_entry(cfg, n) for n in names}
    given = [n for n in names if values[n] and not (default and _same_dir(values[n], default))]
    if len(given) == 2 and not _same_dir(values[given[0]], values[given[1]]):
        a, b = given
        raise UserError(f"path.{a}.data_dir={values[a]} and path.{b}.data_dir={values[b]} differ: "
                        f"they name the one prepared folder of {base}; give one of them "
                        f"(or the same folder to both)")
    chosen = given[0] if given else next((n for n in names if values[n]), None)
    if chosen is None:
        raise UserError(f"path.{dataset}.data_dir is not set: pass 'path.{dataset}.data_dir=DIR' "
                        f"(the prepared {base} folder)")
    return f"path.{chosen}.data_dir", Path(values[chosen])


def unified_data_dirs(cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """A copy of ``cfg['path']`` in which both data keys of the dataset hold its one folder
    (:func:`resolve_data_dir`), or None when the dataset has no card (checked later).

    Raises:
        UserError: the two keys are given and differ.
    """
    try:
        card = load_card(str(cfg["dataset"]))
    except ValueError:
        return None
    _, folder = resolve_data_dir(cfg, card)
    base = base_name(str(cfg["dataset"]))
    paths = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.get("path", {}).items()}
    for name in (base, base + SUPERPIX_SUFFIX):
        paths[name] = {**paths.get(name, {}), "data_dir": str(folder)}
    return paths


def _fail(msg: str) -> UserError:
    return UserError(f"bad config: {msg}")


def _check_types(cfg: Mapping[str, Any]) -> None:
    for key in INT_KEYS:
        value = cfg.get(key)
        if key in cfg and (isinstance(value, bool) or not isinstance(value, int)):
            raise _fail(f"{key}={value!r} must be an integer")


def _check_options(cfg: Mapping[str, Any], card: Card, training: bool) -> None:
    _check_types(cfg)
    if cfg["which_aug"] not in AUG_PRESETS:
        raise _fail(f"which_aug={cfg['which_aug']!r} is not a preset; choose one of {sorted(AUG_PRESETS)}")
    if cfg.get("precision", "fp32") not in PRECISIONS:
        raise _fail(f"precision={cfg.get('precision')!r}: choose one of {list(PRECISIONS)}")
    if training and cfg.get("compile", False):
        problem = compile_problem(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        if problem:
            raise _fail(f"compile=True: {problem}; or run with compile=False")
    if cfg.get(TENSORBOARD_KEY, False) and tensorboard_problem():
        raise _fail(f"tensorboard=True: {tensorboard_problem()}")
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
    if training and reload:
        require_checkpoint(reload, "reload_model_path")
    if cfg.get("resume_from"):
        require_checkpoint(cfg["resume_from"], "resume_from")


def _require(path: Path, how: str) -> None:
    if not path.is_file():
        raise MissingInputError(f"{path} is missing: {how}")


def _scan_ids(card: Card, key: str, data_dir: Path) -> list[int]:
    """Scan ids in the data folder; a missing or empty folder is refused naming ``key``."""
    prepare = (f"prepare it with `python -m data.prepare --dataset {card.name} --raw RAW_DIR "
               f"--out {data_dir}` or set {key} to a prepared folder")
    if not data_dir.is_dir():
        raise MissingInputError(f"{key}={data_dir}: no such folder; {prepare}")
    try:
        return scan_ids_in(card, data_dir)
    except FileNotFoundError as err:
        raise MissingInputError(f"{key}={data_dir} holds no {card.name} scan (no file matching "
                                f"{card.files['image']!r}); {prepare}") from err


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
    _check_intact(cfg, card, data_dir, train_ids, val_ids, training)


def _check_intact(cfg: Mapping[str, Any], card: Card, data_dir: Path, train_ids: list[int],
                  val_ids: list[int], training: bool) -> None:
    """The image files the run reads are complete (``util.io.verify_image_files``: gzip CRC and
    NIfTI size), so a truncated scan is refused here, not in the middle of the run."""
    if training:
        companion = (("superpix", {"scale": cfg["superpix_scale"]}) if is_superpix(cfg["dataset"])
                     else ("label", {}))
        paths = [data_dir / card.file(kind, id=sid, **fields) for sid in train_ids
                 for kind, fields in (("image", {}), companion)]
    else:
        paths = [data_dir / card.file(kind, id=sid) for sid in val_ids for kind in ("image", "label")]
        if card.normalisation == "fold_global":           # the training fold's statistics
            paths += [data_dir / card.file("image", id=sid) for sid in train_ids]
    try:
        verify_image_files(paths, "training" if training else "validation")
    except CorruptImageError as err:
        raise UserError(f"{err}; copy the file again, or re-create it with the command that "
                        "wrote it (docs/data.md)") from err


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
        UserError: an option out of range or incompatible (naming the key and the fix); a
            ``ValueError`` subclass.
        MissingInputError: a missing data folder, snapshot or file (naming the key or the
            command that creates it); a ``FileNotFoundError`` subclass too.
    """
    try:
        return _validate(cfg, card, check_files)
    except UserError:
        raise
    except ValueError as err:                   # label, group and support checks of the folds
        raise UserError(f"bad config: {err}") from err


def _validate(cfg: Mapping[str, Any], card: Card, check_files: bool) -> ConfigSummary:
    training = cfg.get("mode", "train") == "train"
    _check_options(cfg, card, training)
    check_label_list(card, cfg["exclude_cls_list"], "exclude_cls_list")
    labels = test_labels(card, cfg["label_sets"])
    key, data_dir = resolve_data_dir(cfg, card)
    ids = _scan_ids(card, key, data_dir)
    if not 0 <= int(cfg["eval_fold"]) < n_folds(card, len(ids)):
        raise _fail(f"eval_fold={cfg['eval_fold']} is out of range: dataset {card.name} has "
                    f"{n_folds(card, len(ids))} folds (0..{n_folds(card, len(ids)) - 1})")
    fold, n_shots = int(cfg["eval_fold"]), int(cfg["task"]["n_shots"])
    if training:        # the original's training split (n_shots more scans kept out of training)
        val_ids, train_ids = split_fold(card, ids, fold, n_shots)
        supports = support_scan_ids(val_ids, list(cfg["support_idx"]))
    else:               # validation: supports from the fold's validation scans, one query left
        val_ids, train_ids = split_fold(card, ids, fold)
        supports = choose_support_ids(val_ids, list(cfg["support_idx"]), n_shots,
                                      where=f"fold {fold} of {card.name}")
    if training and not train_ids:
        raise _fail(f"eval_fold={cfg['eval_fold']} leaves no training scan in {data_dir}")
    if check_files:
        _check_files(cfg, card, data_dir, train_ids, val_ids, training)
    return ConfigSummary(card, data_dir, ids, val_ids, train_ids, labels, supports, key)


def check_config(cfg: Mapping[str, Any], *, check_files: bool = True) -> ConfigSummary:
    """``validate_config`` with the card of ``cfg['dataset']`` (unknown dataset: UserError
    listing the known cards)."""
    try:
        card = load_card(str(cfg["dataset"]))
    except ValueError as err:
        raise UserError(str(err)) from err
    return validate_config(cfg, card, check_files=check_files)


def _check_init_weights(cfg: Mapping[str, Any]) -> None:
    """The pretrained weights a fresh training run starts from are cached."""
    from models.backbone.weights import (
        MODEL_NAMES,
        MissingWeightsError,
        available_specs,
        require_init_weights,
        resolve_init,
    )

    model = cfg["modelname"]
    if model not in MODEL_NAMES:
        raise _fail(f"modelname={model!r}: choose one of {list(MODEL_NAMES)}")
    try:
        init = resolve_init(cfg["init_weights"], bool(cfg["use_coco_init"]))
    except ValueError as err:
        raise _fail(str(err)) from err
    have = [spec.init for spec in available_specs(model)]
    if init != "random" and init not in have:
        why = " (use_coco_init=True, the default, asks for them)" if cfg["init_weights"] is None else ""
        raise _fail(f"modelname={model} has no '{init}' weights{why}: pass "
                    + " or ".join(f"init_weights={i}" for i in have + ["random"]))
    try:
        require_init_weights(model, init, True)
    except MissingWeightsError as err:
        raise MissingInputError(str(err)) from err


def check_run(cfg: Mapping[str, Any], mode: str = "train") -> ConfigSummary:
    """Everything a run can check before it starts: the config and data (``check_config``),
    the checkpoint files it reads (container only, nothing unpickled) and, for a fresh
    training run, the cached pretrained weights.

    Args:
        cfg: the resolved Sacred config.
        mode: 'train' (training.py) or 'val' (validation.py).
    Raises:
        UserError: the first problem found, with the fix.
    """
    cfg = {**cfg, "mode": mode}
    summary = check_config(cfg)
    if mode == "train":
        starts_fresh = not (cfg.get("resume") or cfg.get("resume_from") or cfg.get("reload_model_path"))
        if starts_fresh:
            _check_init_weights(cfg)
        return summary
    from util.checkpoint import resolve_snapshots

    reload = cfg.get("reload_model_path")
    items = [reload] if isinstance(reload, (str, os.PathLike)) else list(reload or [])
    for item in items:
        if not Path(item).exists():
            raise MissingInputError(f"reload_model_path={item}: no such file or folder; give a "
                                    f"snapshot written by training.py (<run>/snapshots/<step>.pth), "
                                    f"a snapshots folder or a list of them")
    try:
        snapshots = resolve_snapshots(reload)
    except FileNotFoundError as err:
        raise MissingInputError(str(err)) from err
    except ValueError as err:
        raise UserError(str(err)) from err
    for path in snapshots:
        require_checkpoint(path, "reload_model_path")
    return summary
