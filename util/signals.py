"""Stop requests by signal (docs/training.md, 'Signals'): SIGUSR1 (Slurm's ``--signal`` warning
before the time limit) and SIGTERM only set a flag; the training loop checks it after each step,
the ranks agree, rank 0 saves a snapshot and every rank exits cleanly.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopFlag", "STOP_SIGNALS"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopFlag:
    """Context manager installing handlers that record a stop request.

    ``flag.requested`` is True once a signal arrived; ``flag.signal_name`` says which. Handlers
    can only be installed from the main thread; elsewhere the flag stays usable but inert (said
    once). The previous handlers are restored on exit.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        # no logging here: a handler may interrupt the logging module itself

    def request(self, reason: str = "request") -> None:
        """Ask for a stop without a signal (tests, callbacks)."""
        self.requested = True
        self.signal_name = reason

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: %s will not stop training cleanly",
                        "/".join(signal.Signals(s).name for s in self.signals))
            return self
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
