"""Dataset cards: one JSON5 file per dataset describing labels, folds, label groups,
normalisation, body-mask threshold, superpixel parameters, file patterns and data directory.

Cards are searched in ``data/datasets/`` and in every folder of the environment variable
``SSL_ALPNET_CARDS`` (``os.pathsep``-separated), so a user adds a dataset by writing one card.
Experiment dataset names map to cards: ``CHAOST2_Superpix`` (superpixel training) and
``CHAOST2`` (manual labels) both use the card ``CHAOST2``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import json5

__all__ = ["Card", "load_card", "known_cards", "card_dirs", "describe_cards", "base_name",
           "is_superpix", "scan_ids_in", "SUPERPIX_SUFFIX", "CARD_ENV"]

SUPERPIX_SUFFIX = "_Superpix"
CARD_ENV = "SSL_ALPNET_CARDS"
BUILTIN_DIR = Path(__file__).resolve().parent / "datasets"

REQUIRED_KEYS = ("name", "modality", "labels", "label_groups", "normalisation",
                 "body_mask_threshold", "superpixel", "files", "data_dir")
NORMALISATIONS = ("per_volume_zscore", "fold_global")
FILE_KEYS = ("image", "label", "superpix", "fgmask", "classmap")
DEFAULT_FILES = {"record": "record_{id}.json"}
N_DEFAULT_FOLDS = 5


@dataclasses.dataclass(frozen=True)
class Card:
    """A validated dataset card (see ``data/datasets/CHAOST2.json5`` for every field)."""
    name: str
    modality: str
    labels: tuple[str, ...]
    fold_separators: tuple[int, ...] | None
    pa_all: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]
    normalisation: str
    body_mask_threshold: float
    superpixel: dict[str, dict[str, float]]
    files: dict[str, str]
    data_dir: str
    epoch_length: str
    path: Path
    extra: dict[str, Any]

    @property
    def n_classes(self) -> int:
        """Number of label values including background."""
        return len(self.labels)

    def file(self, kind: str, **fields: Any) -> str:
        """File name of ``kind`` (image, label, superpix, fgmask, classmap, record)."""
        return self.files[kind].format(**fields)


def card_dirs() -> list[Path]:
    """Folders searched for cards, built-in first."""
    dirs = [BUILTIN_DIR]
    for part in os.environ.get(CARD_ENV, "").split(os.pathsep):
        if part:
            dirs.append(Path(part))
    return dirs


def known_cards() -> dict[str, Path]:
    """``{card name: path}`` of every card found (later folders override built-ins)."""
    found: dict[str, Path] = {}
    for folder in card_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.json5")):
                found[path.name[: -len(".json5")]] = path
    return found


def describe_cards() -> str:
    """The known cards as text, one line each: name, modality, raw format (which converter
    ``data.prepare --raw`` runs), ``data_dir``; a card that fails validation is listed with its
    error. Used by every command's ``--help`` (see ``data/cli.py``)."""
    lines = [f"known dataset cards (data/datasets/ and ${CARD_ENV}; docs/data.md, 'Dataset cards'):"]
    cards = known_cards()
    width = max((len(name) for name in cards), default=0)
    for name in cards:
        try:
            card = load_card(name)
        except ValueError as err:
            lines.append(f"  {name:<{width}}  unusable: {err}")
            continue
        raw_format = card.extra.get("raw_format") or "-"
        lines.append(f"  {name:<{width}}  {card.modality:<3} raw: {raw_format:<10} "
                     f"data_dir: {card.data_dir}")
    if not cards:
        lines.append("  none found")
    return "\n".join(lines)


def base_name(dataset: str) -> str:
    """``CHAOST2_Superpix`` -> ``CHAOST2``; plain names unchanged."""
    return dataset[: -len(SUPERPIX_SUFFIX)] if dataset.endswith(SUPERPIX_SUFFIX) else dataset


def is_superpix(dataset: str) -> bool:
    return dataset.endswith(SUPERPIX_SUFFIX)


def _fail(path: Path, msg: str) -> ValueError:
    return ValueError(f"dataset card {path}: {msg}")


def load_card(dataset: str) -> Card:
    """Load and validate the card of ``dataset`` (``_Superpix`` suffix allowed).

    Raises:
        ValueError: unknown dataset (the message lists the known cards and their folders),
            unreadable card, or a card with a missing or malformed key.
    """
    name = base_name(dataset)
    cards = known_cards()
    if name not in cards:
        listing = ", ".join(sorted(cards)) or "none"
        folders = ", ".join(str(d) for d in card_dirs())
        raise ValueError(
            f"unknown dataset {dataset!r}: no card {name}.json5 in {folders} "
            f"(known cards: {listing}); write a card there or add its folder to ${CARD_ENV}")
    path = cards[name]
    try:
        raw = json5.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _fail(path, f"cannot be read as JSON5: {err}") from err
    if not isinstance(raw, dict):
        raise _fail(path, "the top level must be an object")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise _fail(path, f"missing key(s) {', '.join(missing)}")
    labels = tuple(str(x) for x in raw["labels"])
    if len(labels) < 2:
        raise _fail(path, "'labels' needs the background and at least one class")
    groups_raw = raw["label_groups"]
    if not isinstance(groups_raw, dict) or "pa_all" not in groups_raw or "groups" not in groups_raw:
        raise _fail(path, "'label_groups' needs 'pa_all' and 'groups'")
    pa_all = tuple(int(x) for x in groups_raw["pa_all"])
    groups = tuple(tuple(int(x) for x in g) for g in groups_raw["groups"])
    for lab in pa_all + tuple(x for g in groups for x in g):
        if not 0 < lab < len(labels):
            raise _fail(path, f"label {lab} in 'label_groups' is not a class of 'labels' (1..{len(labels) - 1})")
    if raw["normalisation"] not in NORMALISATIONS:
        raise _fail(path, f"'normalisation' must be one of {NORMALISATIONS}, got {raw['normalisation']!r}")
    files = dict(DEFAULT_FILES)
    files.update({str(k): str(v) for k, v in raw["files"].items()})
    missing_files = [k for k in FILE_KEYS if k not in files]
    if missing_files:
        raise _fail(path, f"'files' lacks pattern(s) {', '.join(missing_files)}")
    seps = raw.get("fold_separators")
    if seps is not None:
        seps = tuple(int(x) for x in seps)
        if list(seps) != sorted(seps) or len(seps) < 2:
            raise _fail(path, "'fold_separators' must be ascending with at least two entries")
    known = set(REQUIRED_KEYS) | {"fold_separators", "epoch_length"}
    return Card(
        name=str(raw["name"]), modality=str(raw["modality"]), labels=labels,
        fold_separators=seps, pa_all=pa_all, groups=groups,
        normalisation=str(raw["normalisation"]),
        body_mask_threshold=float(raw["body_mask_threshold"]),
        superpixel={str(k): dict(v) for k, v in raw["superpixel"].items()},
        files=files, data_dir=str(raw["data_dir"]),
        epoch_length=str(raw.get("epoch_length", "max_iters_per_load")),
        path=path, extra={k: v for k, v in raw.items() if k not in known})


def _id_regex(pattern: str) -> re.Pattern[str]:
    head, _, tail = pattern.partition("{id}")
    return re.compile("^" + re.escape(head) + r"(\d+)" + re.escape(tail) + "$")


def scan_ids_in(card: Card, data_dir: str | Path) -> list[int]:
    """Scan ids whose image file (card pattern ``files.image``) is in ``data_dir``, sorted numerically.

    Raises:
        FileNotFoundError: ``data_dir`` is missing or holds no image of the card's pattern.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data directory {data_dir} of dataset {card.name} does not exist: prepare it with "
            f"`python -m data.prepare --dataset {card.name} --raw RAW_DIR --out {data_dir}` "
            f"or set path.{card.name}.data_dir")
    rx = _id_regex(card.files["image"])
    ids = sorted(int(m.group(1)) for p in data_dir.iterdir() if (m := rx.match(p.name)))
    if not ids:
        raise FileNotFoundError(
            f"no scan matching {card.files['image']!r} in {data_dir} (dataset {card.name})")
    return ids
