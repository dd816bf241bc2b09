"""Stop requests by signal (docs/training.md, 'Signals'): SIGUSR1 (Slurm's ``--signal`` warning
before the time limit) and SIGTERM only set a flag; the training loop checks it after each step,
the ranks agree, rank 0 saves a snapshot and every rank exits.

A stopped run is not a completed one (docs/training.md, 'Stop and resume'): the entry point
raises ``TrainingInterrupted``, Sacred records the run as INTERRUPTED, the message holds the
literal command that resumes it (``resume_command``), and the process exits with
``EXIT_INTERRUPTED`` (rank 0; the other ranks of a distributed run exit 0).

Safe from the first line (docs/scale-out.md, 'Time limit and requeue'): ``training.py`` and
``validation.py`` call :func:`install_stop_flag` before their heavy imports, so a signal that
arrives while a rank is still importing, parsing its config or joining the process group is
never Python's default action for SIGUSR1 (death, exit 138, a run left RUNNING). Training
keeps that one flag for the whole process and its loop reads it (:func:`stop_requests`): a stop
before the first step ends the run INTERRUPTED after one agreed step, with a snapshot, exit 3.
Validation cannot save and resume, so its flag interrupts (:meth:`StopFlag.arm`): a signal
before the run ends the process with exit 3 and nothing written, one during the run ends it
INTERRUPTED (``StopRequested``), exit 3.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["StopFlag", "STOP_SIGNALS", "EXIT_INTERRUPTED", "TrainingInterrupted", "resume_command",
           "raise_if_stopped", "RESUME_ARG_KEYS", "StopRequested", "install_stop_flag", "installed_stop_flag",
           "stop_requests"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
EXIT_INTERRUPTED = 3          # exit status of a run stopped by a signal (2: a user error)
# command-line updates replaced by the resume command's resume_from=<snapshot>
RESUME_ARG_KEYS = ("resume", "resume_from", "reload_model_path")
SACRED_WITH = "with"
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"     # set by torchrun in every worker


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (signal) after saving a snapshot; the run is not complete.

    Derived from KeyboardInterrupt, the class of a stop request: Sacred records the run as
    ``STATUS`` (INTERRUPTED) and its command-line runner lets it reach the entry point, which
    exits with ``exit_code``. The message is the resume command.
    """

    STATUS = "INTERRUPTED"

    def __init__(self, message: str, *, step: int, snapshot: str | None, command: str | None) -> None:
        super().__init__(message)
        self.step, self.snapshot, self.command = step, snapshot, command
        self.exit_code = EXIT_INTERRUPTED


class StopRequested(KeyboardInterrupt):
    """A stop signal ended a command that cannot save and resume (validation): Sacred records
    the run INTERRUPTED (a KeyboardInterrupt), the process exits with ``exit_code``."""

    STATUS = "INTERRUPTED"

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name
        self.exit_code = EXIT_INTERRUPTED


def resume_command(argv: Sequence[str], snapshot: str | os.PathLike) -> str:
    """The command line that continues a stopped run from ``snapshot``, shell-quoted, pasteable.

    ``argv`` is the original command (``sys.orig_argv``: interpreter, options, script, Sacred
    arguments); its ``resume``/``resume_from``/``reload_model_path`` updates are replaced by
    ``resume_from=<absolute snapshot path>`` (``with`` is added when absent).

    Example: ``['python3', 'training.py', 'with', 'n_steps=10']`` ->
    ``python3 training.py with n_steps=10 resume_from=/runs/mySSL_x/1/snapshots/4.pth``.
    """
    return shlex.join(_resume_args(argv, snapshot))


def _resume_args(argv: Sequence[str], snapshot: str | os.PathLike) -> list[str]:
    args = list(argv)
    if SACRED_WITH in args:
        at = args.index(SACRED_WITH) + 1
        head, updates = args[:at], args[at:]
    else:
        head, updates = args + [SACRED_WITH], []
    kept = [a for a in updates if a.split("=", 1)[0] not in RESUME_ARG_KEYS]
    return head + kept + [f"resume_from={Path(snapshot).resolve()}"]


class StopFlag:
    """Context manager installing handlers that record a stop request.

    ``flag.requested`` is True once a signal arrived; ``flag.signal_name`` says which. Handlers
    can only be installed from the main thread; elsewhere the flag stays usable but inert (said
    once). The previous handlers are restored on exit.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, *, interrupt: bool = False) -> None:
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self.interrupt = interrupt       # once armed, a signal raises StopRequested
        self._armed = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        # no logging here: a handler may interrupt the logging module itself
        if self._armed:
            self._armed = False          # once: the unwinding itself is not interrupted again
            raise StopRequested(self.signal_name)

    def arm(self) -> bool:
        """For a flag made with ``interrupt=True``: from now on a signal raises
        ``StopRequested`` where the main thread is. True (and not armed) when a stop was
        requested already: the caller ends at once."""
        if self.requested:
            return True
        self._armed = self.interrupt
        return False

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
            # restart interrupted system calls (SA_RESTART): C++ code such as torch's TCPStore
            # connect otherwise sees EINTR and prints a warning with a stack trace; the flag is
            # read between steps, so a handler that runs when the call returns is early enough
            signal.siginterrupt(s, False)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


_PROCESS_FLAG: list[StopFlag] = []     # the flag install_stop_flag installed (at most one)


def install_stop_flag(*, interrupt: bool = False) -> StopFlag:
    """Install the process's stop flag for SIGUSR1/SIGTERM now, for the rest of the process.

    An entry point's first lines (``if __name__ == "__main__"``, before the heavy imports):
    from then on a stop signal only sets the flag. Training's loop reads it
    (:func:`stop_requests`); ``interrupt=True`` (validation) makes the flag raise
    ``StopRequested`` once :meth:`StopFlag.arm` was called. Installing twice returns the first
    flag. Never installed in a test process: pytest's own SIGTERM would be ignored.
    """
    if not _PROCESS_FLAG:
        flag = StopFlag(interrupt=interrupt)
        flag.__enter__()                   # not exited: it stays installed until the process ends
        _PROCESS_FLAG.append(flag)
    return _PROCESS_FLAG[0]


def installed_stop_flag() -> StopFlag | None:
    """The flag of :func:`install_stop_flag`, or None when the entry point installed none."""
    return _PROCESS_FLAG[0] if _PROCESS_FLAG else None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopFlag]:
    """The stop flag the training loop reads: the process's flag when the entry point installed
    one (kept installed afterwards, so a late signal is never fatal either), else a
    :class:`StopFlag` installed for the loop's duration (in-process runs, tests)."""
    flag = installed_stop_flag()
    if flag is not None:
        yield flag
        return
    with StopFlag() as own:
        yield own


def raise_if_stopped(result: Mapping[str, Any], *, argv: Sequence[str], is_main: bool,
                     env: Mapping[str, str] = os.environ) -> None:
    """After ``util.training.train``: on rank 0, raise ``TrainingInterrupted`` when the run was
    stopped, after logging the stop and the resume command.

    Only rank 0 raises (and exits with ``EXIT_INTERRUPTED``); the other ranks return and exit 0.
    Launchers end every task once one exits non-zero (``srun --kill-on-bad-exit``, torchrun):
    rank 0, which records the run's INTERRUPTED status, must not be the one killed, and its
    status alone becomes the launcher's (srun and torchrun report the non-zero one). Under
    torchrun the worker's command line is not the one typed, so the message gives the
    arguments to pass to the same torchrun command.

    Args:
        result: what ``train`` returned (``status``, ``step``, ``snapshot``, ``n_steps``,
            ``stopped_by``).
        argv: the original command line (``sys.orig_argv``).
    """
    if result.get("status") != "stopped" or not is_main:
        return
    step, snapshot = int(result["step"]), result.get("snapshot")
    head = (f"training stopped by {result.get('stopped_by') or 'a stop request'} after step {step}"
            f" of {result.get('n_steps', '?')}")
    if snapshot is None:
        command = None
        message = (f"{head}; no snapshot was written (no run directory), so it cannot be resumed: "
                   "run with a file observer (training.py adds one under path.log_dir)")
    else:
        args = _resume_args(argv, snapshot)
        command = shlex.join(args)                      # resume_command(argv, snapshot)
        if TORCHRUN_ENV in env:
            script = next((i for i, a in enumerate(args) if a.endswith(".py")), 0)
            script_args = shlex.join(args[script:])
            message = (f"{head}; snapshot {snapshot}. Resume with your torchrun command and these "
                       f"arguments:\n  {script_args}")
        else:
            message = f"{head}; snapshot {snapshot}. Resume with:\n  {command}"
    log.warning("%s", message)
    raise TrainingInterrupted(message, step=step, snapshot=snapshot, command=command)
