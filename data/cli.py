"""What every command line of the project shares: one help formatter that shows defaults while
keeping descriptions as written, and the list of known dataset cards at the end of ``--help``.

    parser = new_parser("python -m data.prepare", __doc__)
    parser.add_argument("--scale", default="MIDDLE", help="superpixel scale of the card")
    # --help: "... superpixel scale of the card (default: MIDDLE)" and, below, the card list
"""
from __future__ import annotations

import argparse
from typing import Callable, Sequence

from data.cards import describe_cards
from util.user_errors import report

__all__ = ["HelpFormatter", "new_parser", "run_command", "INPUT_ERRORS"]

# what the data commands raise for bad input (unknown card, missing or bad file, named)
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults appended as ``(default: X)``, description and epilog kept line for line.

    No default is appended where it says nothing: required arguments, ``None`` (not given),
    ``False`` of an on/off flag, or a help text that already names its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if not text:
            return text
        default = action.default
        if (action.required or default is None or default is False or default is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        return super()._get_help_string(action)


class _CardsParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose epilog, the card list, is built only when the help is shown:
    listing the cards loads and validates every one, which a normal run does not need."""

    def format_help(self) -> str:
        if self.epilog is None:
            self.epilog = describe_cards()
        return super().format_help()


def new_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with ``HelpFormatter`` and the card list (``data.cards.describe_cards``)
    as epilog.

    Args:
        prog: the command as a user types it, e.g. ``python -m data.prepare``.
        description: shown as written (usually the module docstring).
    """
    return _CardsParser(prog=prog, description=description, formatter_class=HelpFormatter)


def run_command(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """``main(argv)`` as a process runs it: a bad input (``INPUT_ERRORS``) is one line on stderr,
    ``error: <what is wrong and the fix>``, and exit status 2, as for training and validation
    (``ALPNET_TRACEBACK=1`` adds the traceback)."""
    try:
        return main(argv)
    except INPUT_ERRORS as err:
        return report(err)
