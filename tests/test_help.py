"""Every command's ``--help`` lists the known dataset cards and shows its defaults (run in-process
through each command's ``main(["--help"])``)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from data.cards import CARD_ENV, known_cards
from data.cli import HelpFormatter, new_parser

BUILTIN_CARDS = ("C0", "CHAOST2", "CHAOST2_128", "SABS")   # data/datasets/*.json5

# (module, one default its --help must show): the values are the documented defaults
COMMANDS = [
    ("data.prepare", "(default: MIDDLE)"),             # --scale
    ("data.chaos_mr", "(default: CHAOST2)"),           # --dataset: the card the converter writes
    ("data.synapse_ct", "(default: SABS)"),
    ("data.cmr_c0", "(default: C0)"),
    ("data.class_index", "(default: 1 100)"),          # --min-tp
    ("data.pseudolabels", "(default: MIDDLE)"),        # --scale
    ("util.summarize", "(default: Dice)"),             # --metric
    ("util.fetch_weights", "(default: dlfcn_res101)"),  # --model
    ("segment", "(default: 8)"),                       # --batch-size
]


def help_text(module: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``main(["--help"])`` of ``module``: exits 0 and prints the help on stdout."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module, default", COMMANDS, ids=[m for m, _ in COMMANDS])
def test_help_lists_cards_and_defaults(module, default, capsys):
    text = help_text(module, capsys)
    assert "known dataset cards" in text
    for name in BUILTIN_CARDS:
        assert f"\n  {name} " in text, f"{module} --help lacks the card {name}"
    assert default in text
    # defaults that say nothing are left out (required options, unset values, off flags)
    assert "(default: None)" not in text
    assert "(default: False)" not in text


def test_help_lists_a_users_card_and_a_broken_one(tmp_path: Path, monkeypatch, capsys):
    builtin = Path(known_cards()["CHAOST2"]).read_text(encoding="utf-8")
    (tmp_path / "MYDATA.json5").write_text(builtin.replace('name: "CHAOST2"', 'name: "MYDATA"')
                                           .replace("./data/CHAOST2/", "./data/MYDATA/"),
                                           encoding="utf-8")
    (tmp_path / "BROKEN.json5").write_text('{ name: "BROKEN" }', encoding="utf-8")
    monkeypatch.setenv(CARD_ENV, str(tmp_path))
    text = help_text("data.pseudolabels", capsys)
    assert "\n  MYDATA " in text and "data_dir: ./data/MYDATA/" in text
    broken = next(line for line in text.splitlines() if line.startswith("  BROKEN "))
    assert "unusable" in broken and "missing key(s)" in broken


def test_formatter_keeps_the_description_and_appends_defaults():
    parser = new_parser("prog", "line one\n    indented line two")
    parser.add_argument("--size", type=int, default=256, help="edge length")
    parser.add_argument("--jobs", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--must", required=True, default="x", help="required value")
    assert parser.formatter_class is HelpFormatter
    text = parser.format_help()
    assert "line one\n    indented line two" in text          # raw description, not re-wrapped
    assert "edge length (default: 256)" in text
    assert "processes (default: all cores)\n" in text           # its own default text, not twice
    assert "required value\n" in text                          # required: no default appended


@pytest.mark.parametrize("script, keys", [("training.py", ("n_steps", "modelname", "tensorboard")),
                                          ("validation.py", ("reload_model_path", "support_idx"))])
def test_entry_script_help_points_at_print_config_docs_and_keys(script, keys):
    """``python3 training.py --help``: not Sacred's generic usage but the commands that list
    every key, the docs pages, and the most used keys with their defaults and comments."""
    import subprocess
    import sys

    from config_ssl_upload import ex
    from util.config_keys import lookup

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, script, "--help"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"python3 {script} print_config" in out and "print_named_configs" in out
    assert "docs/method.md, 'Config keys'" in out and "Usage:" not in out
    summary = ex.configurations[0]()
    for key in keys:
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{key}="))
        assert line.split()[0] == f"{key}={lookup(summary, key)!r}"
        assert summary.docs[key] in line                  # the key's comment in config_ssl_upload.py
