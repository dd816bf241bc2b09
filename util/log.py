"""The project's one logging setup: INFO on rank 0, WARNING on other ranks.

Modules use ``log = logging.getLogger(__name__)``; entry points call :func:`setup_logging` once.
"""
from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging", "LOG_FORMAT"]

LOG_FORMAT = "%(levelname)s - %(name)s - %(message)s"


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
