"""The command line of ``training.py`` and ``validation.py``: a pre-flight, then Sacred.

Before Sacred creates a run (and its run directory), :func:`run_command_line`

1. parses the ``with`` updates exactly as Sacred does (its docopt usage and
   ``sacred.arg_parser.get_config_updates``);
2. refuses unknown named configs and config keys, suggesting the closest name (difflib), and
   values whose type cannot work (``n_steps=ten``);
3. computes the config through Sacred itself, with the unobserved command ``resolve_config``
   (config scopes, named configs and config hooks, no observer, nothing written; the data
   keys stay as given, so errors name the key the user set);
4. runs the entry point's check on it (``util.experiment.config_check.check_run``).

A mistake found there is printed as one ``error: ...`` line and the process exits with status
2 (docs/training.md, "Mistakes and exit codes"); otherwise ``ex.run_commandline`` runs the
command as usual. Resolving through Sacred rather than re-implementing its config logic keeps
the pre-flight's config identical to the run's.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from docopt import DocoptExit, docopt
from sacred.arg_parser import get_config_updates
from sacred.utils import SacredError

from util.config_keys import all_keys, leaf_keys, lookup
from util.distributed import launch_rank
from util.experiment.config_check import unified_data_dirs
from util.log import plain_console
from util.signals import EXIT_INTERRUPTED, StopRequested, TrainingInterrupted, installed_stop_flag
from util.user_errors import UserError, did_you_mean, report

__all__ = ["run_command_line", "preflight", "EXIT_OK", "RESOLVE_COMMAND"]

log = logging.getLogger(__name__)

EXIT_OK = 0
RESOLVE_COMMAND = "resolve_config"          # the command resolve_config of config_ssl_upload.py
CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml", ".pickle")   # Sacred's config-file updates


def _parse(ex: Any, argv: Sequence[str]) -> tuple[str, dict, list[str]] | None:
    """(command, config updates, named configs), or None when Sacred handles the line itself
    (help, usage errors, unknown commands)."""
    _, _, internal_usage = ex.get_usage()
    try:
        args = docopt(internal_usage, [str(a) for a in argv[1:]], default_help=False)
    except DocoptExit:
        return None
    command = args.get("COMMAND") or ex.default_command
    if args["help"] or args["--help"] or command not in ex.commands:
        return None
    updates, named = get_config_updates(args["UPDATE"])
    return command, updates, named


def _check_value_type(key: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"bad config: {key}={value!r} must be True or False")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"bad config: {key}={value!r} must be an integer (default {default})")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"bad config: {key}={value!r} must be a number (default {default})")


def _check_names(ex: Any, updates: Mapping[str, Any], named: Sequence[str], script: str) -> None:
    """Unknown named configs and keys, with the closest known name; values of the wrong type."""
    for name in named:
        if name not in ex.named_configs and not name.endswith(CONFIG_FILE_SUFFIXES):
            raise UserError(f"unknown named config {name}{did_you_mean(name, ex.named_configs)}: "
                            f"`python3 {script} print_named_configs` lists them")
    defaults = ex.configurations[0]()
    known = all_keys(defaults)
    for key in leaf_keys(updates):
        if key not in known:
            raise UserError(f"unknown config key {key}{did_you_mean(key, leaf_keys(defaults))}: "
                            f"`python3 {script} print_config` lists every key")
        _check_value_type(key, lookup(updates, key), lookup(defaults, key))


def _resolve(ex: Any, updates: dict, named: list[str]) -> Mapping[str, Any]:
    """The config Sacred computes for these updates, without observers or output files."""
    sacred_log, root = logging.getLogger(ex.path), logging.getLogger()
    level, root_level = sacred_log.level, root.level
    sacred_log.setLevel(logging.ERROR)               # no 'Running command' lines for this
    root.setLevel(logging.ERROR)                     # nor its config warnings: the run prints them once
    try:
        run = ex.run(RESOLVE_COMMAND, config_updates=updates, named_configs=named)
    except UserError:
        raise
    except SacredError as err:
        raise UserError(str(err).splitlines()[0]) from err
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as err:
        raise UserError(f"bad config: the config cannot be computed from the given values "
                        f"({type(err).__name__}: {err})") from err
    finally:
        sacred_log.setLevel(level)
        root.setLevel(root_level)
    return run.result


def preflight(ex: Any, argv: Sequence[str], *, main_command: str,
              check: Callable[[Mapping[str, Any]], Any]) -> Mapping[str, Any] | None:
    """Check the command line ``argv`` before any run exists.

    Args:
        ex: the Sacred experiment.
        argv: ``sys.argv`` (script name first).
        main_command: the entry point's command; ``check`` runs only for it.
        check: called with the resolved config; raises :class:`UserError`.
    Returns:
        the resolved config, or None when Sacred handles the line itself (help, usage).
    Raises:
        UserError: the first mistake found.
    """
    parsed = _parse(ex, argv)
    if parsed is None:
        return None
    command, updates, named = parsed
    _check_names(ex, updates, named, Path(argv[0]).name if argv else "training.py")
    config = _resolve(ex, updates, named)
    unified_data_dirs(config)                  # two different data folders given: refused
    if command == main_command:
        check(config)
    return config


def _with_command(argv: Sequence[str], main_command: str) -> list[str]:
    """``argv`` naming the entry point's command when it names none (``script with ...``):
    ``ex`` is shared by training.py and validation.py, and its default command is whichever
    registered last when both are imported in one process."""
    argv = [str(a) for a in argv]
    if len(argv) == 1 or argv[1] == "with":
        return [argv[0], main_command, *argv[1:]]
    return argv


def run_command_line(ex: Any, argv: Sequence[str], *, main_command: str,
                     check: Callable[[Mapping[str, Any]], Any]) -> int:
    """:func:`preflight`, then ``ex.run_commandline(argv)``.

    Returns:
        the process exit status: 0 when the command ran, 2 for a user mistake (one ``error:``
        line on stderr; ``ALPNET_TRACEBACK=1`` adds the traceback), 3 (``EXIT_INTERRUPTED``)
        when a stop signal ended training early (the resume command was printed) or ended
        validation (``util.signals.install_stop_flag(interrupt=True)``: before the run,
        nothing written; during it, the run INTERRUPTED). Sacred itself exits with 1
        (traceback) when the run fails.
    """
    plain_console()
    argv = _with_command(argv, main_command)
    flag = installed_stop_flag()
    try:
        if flag is not None and flag.interrupt and flag.arm():   # a signal while Python was importing
            raise StopRequested(flag.signal_name or "a stop signal")
        preflight(ex, argv, main_command=main_command, check=check)
    except UserError as err:
        return report(err)
    except StopRequested as stop:                   # before any run: nothing to record or resume
        log.warning("%s before the run started: nothing was written; run the command again", stop)
        return EXIT_INTERRUPTED
    if launch_rank() != 0:              # Sacred's config warnings once per run: rank 0's
        logging.getLogger().setLevel(logging.ERROR)  # (the run's setup_logging sets WARNING here)
    try:
        ex.run_commandline(argv)
    except (TrainingInterrupted, StopRequested) as stop:   # stopped by a signal: recorded INTERRUPTED
        return stop.exit_code
    return EXIT_OK
