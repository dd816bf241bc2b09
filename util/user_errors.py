"""User mistakes answered in one line (docs/training.md, "Mistakes and exit codes").

A mistake the user can fix (a bad config value, an unknown dataset or key, a missing data folder,
weights or checkpoint) raises :class:`UserError`. The entry points turn it into exactly one line
on stderr, ``error: <what is wrong and the fix>``, and exit with :data:`EXIT_USER_ERROR`; the
traceback is shown only when the environment variable :data:`TRACEBACK_ENV` is set to 1.

Also here: the closest-key suggestion for a mistyped config key and the cheap structural test
that tells a checkpoint file from any other file without unpickling it.
"""
from __future__ import annotations

import difflib
import os
import pickle
import sys
import traceback
import zipfile
from pathlib import Path
from typing import Iterable, TextIO

__all__ = ["UserError", "MissingInputError", "EXIT_USER_ERROR", "TRACEBACK_ENV", "error_line",
           "report", "closest", "did_you_mean", "checkpoint_problem",
           "require_checkpoint"]

EXIT_USER_ERROR = 2                     # like argparse: the command line asked for something wrong
TRACEBACK_ENV = "ALPNET_TRACEBACK"      # =1: print the traceback of a user error too
SUGGESTION_CUTOFF = 0.6                 # difflib similarity below which no key is suggested
# torch.save's legacy (pre-1.6, non-zip) format starts with this pickled magic number
_TORCH_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
NO_SUCH_FILE = "no such file"           # checkpoint_problem's answer for a missing path
_SNAPSHOT_HINT = "give a snapshot written by training.py (<run>/snapshots/<step>.pth)"


class UserError(ValueError):
    """A mistake in the command line, config or input files; the message says what and the fix."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the run needs does not exist (the message names the key and the value)."""


def error_line(err: BaseException) -> str:
    """``error: <message>`` on one line (line breaks in the message become spaces)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return f"error: {text}"


def report(err: BaseException, stream: TextIO | None = None) -> int:
    """Print ``err`` as one line (plus its traceback when ``ALPNET_TRACEBACK=1``).

    Returns:
        :data:`EXIT_USER_ERROR`, the exit status of the process.
    """
    stream = stream or sys.stderr
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        traceback.print_exception(type(err), err, err.__traceback__, file=stream)
    print(error_line(err), file=stream)
    stream.flush()
    return EXIT_USER_ERROR


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to ``word`` (difflib ratio >= 0.6), or None."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=SUGGESTION_CUTOFF)
    return found[0] if found else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean X?)"`` for the closest candidate, or an empty string."""
    best = closest(word, candidates)
    return f" (did you mean {best}?)" if best else ""


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a PyTorch checkpoint file, or None when it looks like one.

    Looks at the container only (a zip archive holding ``<name>/data.pkl``, or torch's legacy
    pickled format); nothing is unpickled, so it costs a few bytes of reading whatever the size.
    """
    path = Path(path)
    if not path.exists():
        return NO_SUCH_FILE
    if path.is_dir():
        return "a folder, not a checkpoint file"
    size = path.stat().st_size
    if size == 0:
        return "an empty file, not a checkpoint"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist()):
                    return None
        except (zipfile.BadZipFile, OSError) as err:
            return f"a damaged zip archive of {size} bytes ({err}), not a checkpoint"
        return f"a zip archive of {size} bytes without data.pkl, not a PyTorch checkpoint"
    with path.open("rb") as fh:
        head = fh.read(len(_TORCH_LEGACY_MAGIC))
    if head == _TORCH_LEGACY_MAGIC:
        return None
    return f"not a checkpoint: a {size}-byte file that is neither a PyTorch archive nor a legacy torch file"


def require_checkpoint(path: str | os.PathLike, key: str) -> Path:
    """``path`` if it looks like a checkpoint file, else a :class:`UserError` naming ``key``.

    Raises:
        MissingInputError: the file does not exist.
        UserError: it exists but is not a checkpoint (says so, with its size).
    """
    problem = checkpoint_problem(path)
    if problem == NO_SUCH_FILE:
        raise MissingInputError(f"{key}={path}: {NO_SUCH_FILE}; {_SNAPSHOT_HINT}")
    if problem is not None:
        raise UserError(f"{key}={path} is {problem}; {_SNAPSHOT_HINT}")
    return Path(path)
