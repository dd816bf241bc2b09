"""Validation's supports come from the fold's validation scans and leave at least one query
(docs/validation.md, 'Several shots'), for every dataset card: more shots than the fold allows
are refused in one line naming the limit, before any run exists."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from config_ssl_upload import ex
from data.cards import N_DEFAULT_FOLDS, base_name, load_card, scan_ids_in
from dataloaders.validation_set import load_validation_set
from tests.tinydata import build_tiny_dataset
from util.experiment.config_check import validate_config
from util.user_errors import EXIT_USER_ERROR, UserError

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted(p.stem for p in (ROOT / "data" / "datasets").glob("*.json5"))
TINY_SCANS = 10          # tinydata's scan count for a card without fold separators


def n_validation_scans(card_name: str) -> int:
    """Fold 0's validation list: its own scans (separators 0 .. sep[1], or a fifth of the tiny
    set's 10 scans) plus the one support candidate of the original 1-shot protocol."""
    card = load_card(card_name)
    seps = card.fold_separators
    fold_size = seps[1] - seps[0] if seps else TINY_SCANS // N_DEFAULT_FOLDS
    return fold_size + 1


@pytest.fixture(scope="module", params=CARDS)
def card_data(request, tmp_path_factory):
    tiny = build_tiny_dataset(tmp_path_factory.mktemp(request.param), request.param, hw=16,
                              depth=2, block=8)
    return request.param, tiny


def val_config(name: str, data_dir: Path, n_shots: int, **updates) -> dict:
    fixed = {"dataset": name, "mode": "val", "eval_fold": 0, "support_idx": [-1],
             "exclude_cls_list": [], "task": {"n_shots": n_shots}, **updates}
    cfg = copy.deepcopy(dict(ex.configurations[0](fixed=fixed)))
    cfg["path"][base_name(name)] = {"data_dir": str(data_dir)}
    return cfg


def test_every_card_allows_one_shot_less_than_its_validation_scans(card_data):
    name, tiny = card_data
    n_val = n_validation_scans(name)
    summary = validate_config(val_config(name, tiny.data_dir, n_val - 1), tiny.card)
    assert len(summary.val_ids) == n_val
    assert set(summary.support_ids) <= set(summary.val_ids)
    assert not set(summary.support_ids) & set(summary.train_ids)
    assert len(set(summary.val_ids) - set(summary.support_ids)) == 1          # one query left
    with pytest.raises(UserError, match=rf"task.n_shots={n_val}: fold 0 of {tiny.card.name} has "
                                        rf"{n_val} validation scans .* at most {n_val - 1} shot"):
        validate_config(val_config(name, tiny.data_dir, n_val), tiny.card)


def test_loaded_supports_are_validation_scans_never_training_scans(card_data):
    """Two shots: the last two scans of the fold's (1-shot) validation list; the training scans
    of a 1-shot network are all the others."""
    name, tiny = card_data
    card = tiny.card
    ids = sorted(scan_ids_in(card, tiny.data_dir))
    n_val = n_validation_scans(name)
    vset = load_validation_set(card, tiny.data_dir, fold=0, label_sets=0, n_shots=2)
    assert vset.val_ids == ids[:n_val]                        # fold 0 starts at separator 0
    assert vset.support_ids == ids[n_val - 2:n_val]
    assert vset.query_ids == ids[:n_val - 2]


def test_too_many_shots_on_the_command_line_is_one_line_and_no_run(tmp_path):
    """validation.py with task.n_shots=5 on CHAOS fold 0 (5 validation scans): exit 2, one
    error line naming the 4 shots allowed, no run folder."""
    tiny = build_tiny_dataset(tmp_path / "chaos", "CHAOST2", hw=16, depth=2, block=8)
    logdir = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "validation.py", "with", "task.n_shots=5",
                           f"path.log_dir={logdir}", f"path.CHAOST2.data_dir={tiny.data_dir}",
                           f"reload_model_path={tmp_path / 'none.pth'}", "support_idx=[-1]"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: bad config: task.n_shots=5: fold 0 of "
                                                   "CHAOST2 has 5 validation scans")
    assert "at most 4 shot" in lines[0]
    assert not logdir.exists()
