"""The tests' own interpreter under the name the launchers call, ``python3``.

The launchers and sbatch scripts run ``python3`` from PATH (``PYTHON=python3``, ``srun ...
python3 -u``, the card look-ups of ``examples/launch_lib.sh``). A test that runs them puts
:func:`python3_dir` first on PATH, so what they start is ``sys.executable``, the interpreter
running pytest, with its packages: also from a virtual environment that was not activated
(``venv/bin/python -m pytest``). The entry is a small shell script that ``exec``\\ s
``sys.executable`` by its path; a symlink would not do: a venv's ``python`` is itself a link
to the base interpreter, and Python finds the venv (``pyvenv.cfg``) from the path it was
started by, so a link elsewhere starts the base interpreter without the venv's packages.
"""
from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

__all__ = ["python3_dir", "with_python3", "prepend_python3"]


def python3_dir(folder: Path) -> Path:
    """``folder`` (created) holding ``python3``, which runs ``sys.executable`` with its arguments."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = folder / "python3"
    entry.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n', encoding="utf-8")
    entry.chmod(entry.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def with_python3(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` with :func:`python3_dir` of ``folder`` first on its PATH."""
    path = env.get("PATH", os.defpath)
    return {**env, "PATH": f"{python3_dir(folder)}{os.pathsep}{path}"}


def prepend_python3(monkeypatch, folder: Path) -> None:
    """For a test: ``python3`` on ``os.environ``'s PATH is :func:`python3_dir` of ``folder``."""
    monkeypatch.setenv("PATH", f"{python3_dir(folder)}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
