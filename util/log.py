"""The project's one logging setup: INFO on rank 0, WARNING on other ranks; a quiet console.

Modules use ``log = logging.getLogger(__name__)``; entry points call :func:`setup_logging` once,
:func:`silence_known_warnings` before importing sacred and :func:`plain_console` before a run.
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import TextIO

__all__ = ["setup_logging", "LOG_FORMAT", "silence_known_warnings", "plain_console"]

LOG_FORMAT = "%(levelname)s - %(name)s - %(message)s"
# sacred 0.8.7 imports pkg_resources, which setuptools deprecates with a UserWarning on import
PKG_RESOURCES_WARNING = r"pkg_resources is deprecated"
# sacred.commands' colour constants (print_config, named configs, repositories)
_SACRED_COLOURS = ("COLOR_DIRTY", "COLOR_TYPECHANGED", "COLOR_ADDED", "COLOR_MODIFIED",
                   "COLOR_DOC", "ENDC")


def silence_known_warnings() -> None:
    """Hide the pkg_resources deprecation warning that importing sacred prints (harmless: the
    pinned setuptools<81 still ships it). Call before sacred is imported."""
    warnings.filterwarnings("ignore", message=PKG_RESOURCES_WARNING, category=UserWarning)
    warnings.filterwarnings("ignore", message=PKG_RESOURCES_WARNING, category=DeprecationWarning)


def plain_console(stream: TextIO | None = None) -> bool:
    """Drop sacred's ANSI colour codes when ``stream`` (default stdout) is not a terminal.

    Returns:
        True when colours were switched off.
    """
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return False
    import sacred.commands as commands

    for name in _SACRED_COLOURS:
        setattr(commands, name, "")
    commands.LEGEND = "(modified, added, typechanged, doc)"
    return True


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record, so Sacred's console
    capture (which replaces ``sys.stderr`` during a run, then closes its copy) gets the lines of
    every run, also when several runs share one process (tests)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Configure the root logger once: ``level`` on rank 0, WARNING elsewhere."""
    root = logging.getLogger()
    effective = level if rank == 0 else logging.WARNING
    # Sacred installs a plain StreamHandler on the root logger when a run starts; keep one
    # handler only, or every line is printed twice.
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    if not any(getattr(h, "_alpnet", False) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._alpnet = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(effective)
