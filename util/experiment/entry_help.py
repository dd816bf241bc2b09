"""``python3 training.py --help`` and ``validation.py --help`` (docs/training.md, 'Running
training'): what the script does, the Sacred commands that list every key (``print_config``)
and named config, the docs pages, and the most used keys with their defaults and comments,
instead of Sacred's generic usage text."""
from __future__ import annotations

from typing import Any, Sequence

from util.config_keys import lookup

__all__ = ["HELP_ARGS", "asks_for_help", "entry_help", "TRAINING_KEYS", "VALIDATION_KEYS"]

HELP_ARGS = ("-h", "--help", "help")
TRAINING_KEYS = ("dataset", "eval_fold", "label_sets", "exclude_cls_list", "n_steps", "modelname",
                 "init_weights", "batch_size", "precision", "save_snapshot_every", "print_interval",
                 "resume", "resume_from", "tensorboard", "path.log_dir")
VALIDATION_KEYS = ("reload_model_path", "dataset", "eval_fold", "label_sets", "support_idx",
                   "task.n_shots", "val_batch_size", "write_figures", "tensorboard", "path.log_dir")
KEY_COLUMN = 26


def asks_for_help(argv: Sequence[str]) -> bool:
    """True for ``script --help`` / ``-h`` / ``help`` (nothing else on the line)."""
    return len(argv) == 2 and str(argv[1]) in HELP_ARGS


def _key_lines(summary: Any, keys: Sequence[str]) -> list[str]:
    docs = getattr(summary, "docs", {}) or {}
    lines = []
    for key in keys:
        try:
            value = lookup(summary, key)
        except KeyError:
            continue
        comment = docs.get(key, "")
        lines.append(f"  {f'{key}={value!r}':<{KEY_COLUMN}} {comment}".rstrip())
    return lines


def entry_help(ex: Any, script: str, purpose: str, keys: Sequence[str], docs: Sequence[str]) -> str:
    """The help text of an entry script over experiment ``ex`` (defaults and comments from its
    config scope, as ``print_config`` shows them)."""
    summary = ex.configurations[0]()
    lines = [f"usage: python3 {script} [with NAMED_CONFIG ... KEY=VALUE ...]",
             f"       python3 {script} print_config [with ...]     every key: value and comment",
             f"       python3 {script} print_named_configs         datasets and settings",
             "", purpose, "",
             "examples:",
             f"  python3 {script} with chaos_setting2 eval_fold=1",
             f"  python3 {script} print_config with chaos_setting2",
             "", "most used keys (default, comment):", *_key_lines(summary, keys),
             "", "docs: " + "; ".join(docs),
             "mistakes: one 'error:' line and exit status 2, before any run directory exists"]
    return "\n".join(lines)
