"""The code runs on Python 3.10, the oldest version the README promises: no 3.11-only syntax or
library API anywhere in the project's Python files.

Three checks of increasing depth: a scan for the 3.11 names a 3.10 interpreter lacks (always),
the 3.10 grammar through ``ast.parse(feature_version=(3, 10))`` (always), and, where available,
a real Python 3.10 compiling every file and ``vermin --target=3.10-`` (which knows the standard
library's version history; ``pip install vermin``)."""
from __future__ import annotations

import ast
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "runs", "build", "dist", "node_modules"}
THIS = Path(__file__).resolve()

# name -> what 3.10 lacks; the patterns are assembled so that this file does not match itself
NEW_IN_311 = {
    r"\.add_" + r"note\(": "BaseException.add_note (3.11)",
    r"^\s*(import|from)\s+toml" + r"lib\b": "tomllib (3.11)",
    r"\bBase" + r"ExceptionGroup\b|\bException" + r"Group\b": "ExceptionGroup (3.11)",
    r"^\s*except\s*" + r"\*": "except* (3.11)",
    r"\btyping\.Se" + r"lf\b|from typing import[^\n]*\bSe" + r"lf\b": "typing.Self (3.11)",
    r"\bdatetime\.U" + r"TC\b|from datetime import[^\n]*\bU" + r"TC\b": "datetime.UTC (3.11)",
    r"\bStr" + r"Enum\b": "enum.StrEnum (3.11)",
    r"\bTask" + r"Group\b": "asyncio.TaskGroup (3.11)",
    r"\bfile_" + r"digest\(": "hashlib.file_digest (3.11)",
    r"\bLiteral" + r"String\b|\bNever\b\s*\]|\breveal_" + r"type\(": "typing names of 3.11",
}


def project_files() -> list[Path]:
    """Every .py file of the project (tracked or not), outside caches and environments."""
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return sorted(files)


def test_project_files_found():
    names = {p.relative_to(ROOT).as_posix() for p in project_files()}
    assert {"training.py", "models/grid_proto_fewshot.py", "util/distributed.py"} <= names


def test_no_311_names():
    hits = []
    for path in project_files():
        if path == THIS:
            continue
        text = path.read_text(encoding="utf-8")
        for pattern, what in NEW_IN_311.items():
            for m in re.finditer(pattern, text, flags=re.MULTILINE):
                line = text.count("\n", 0, m.start()) + 1
                hits.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not hits, "Python 3.11-only API (the project supports 3.10):\n" + "\n".join(hits)


def test_scan_catches_what_it_should():
    """The patterns above match the 3.11 forms (else the scan would pass vacuously)."""
    samples = ["err.add_" + "note('x')", "import toml" + "lib", "raise Exception" + "Group('x', [])",
               "except" + "* ValueError:", "from typing import Any, Se" + "lf", "datetime.U" + "TC"]
    for sample in samples:
        assert any(re.search(p, sample, flags=re.MULTILINE) for p in NEW_IN_311), sample


def test_grammar_of_310():
    bad = []
    for path in project_files():
        try:
            ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))
        except SyntaxError as err:
            bad.append(f"{path.relative_to(ROOT)}:{err.lineno}: {err.msg}")
    assert not bad, "\n".join(bad)


def _python310() -> str | None:
    """A working Python 3.10 interpreter: $PYTHON310, a pyenv install, or python3.10 on PATH."""
    candidates = [os.environ.get("PYTHON310")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10.*/bin/python3")))
    candidates.append(shutil.which("python3.10"))
    for exe in filter(None, candidates):
        try:
            res = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                                 text=True, timeout=30)
        except OSError:
            continue
        if res.returncode == 0 and res.stdout.strip() == "(3, 10)":
            return exe
    return None


PYTHON310 = _python310()


@pytest.mark.skipif(PYTHON310 is None, reason="no Python 3.10 interpreter here (set PYTHON310 to one)")
def test_python310_compiles_every_file():
    code = ("import sys\nbad = []\nfor f in sys.argv[1:]:\n"
            "    try:\n        compile(open(f, encoding='utf-8').read(), f, 'exec', dont_inherit=True)\n"
            "    except SyntaxError as e:\n        bad.append(f'{f}:{e.lineno}: {e.msg}')\n"
            "print(sys.version_info[:2]); print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    res = subprocess.run([PYTHON310, "-c", code, *map(str, project_files())], capture_output=True,
                         text=True, encoding="utf-8", timeout=120)
    assert res.stdout.startswith("(3, 10)"), res.stdout + res.stderr
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(importlib.util.find_spec("vermin") is None, reason="vermin not installed (pip install vermin)")
def test_vermin_target_310():
    # `.long()` after a subscript is read as Python 2's `long` builtin: excluded
    res = subprocess.run([sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
                          "--target=3.10-", "--violations", "--no-tips", "--exclude", "long",
                          *map(str, project_files())], capture_output=True, text=True, encoding="utf-8",
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
