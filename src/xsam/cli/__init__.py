"""``xsam`` command line: one module per verb, each with ``add_parser`` and ``run``.

Verbs import their heavy dependencies only when they run. Expected errors (bad arguments, missing or
malformed files) are raised as exceptions by the library and turned into one line on stderr,
``error: <what and where>``, and exit code 2 here, in :func:`main`, and nowhere else; ``--debug`` (or
``XSAM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import convert, demo, describe, predict, score, serve, synth, train
from . import eval as evaluate

VERBS = (describe, convert, predict, train, evaluate, score, synth, serve, demo)

EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
)
"""Errors that mean "the input is wrong" (the message says what and where), not "xsam has a bug"."""

USAGE_ERROR = 2
_DEBUG_HELP = "show the traceback of an error instead of one line (also XSAM_DEBUG=1)"


def build_parser() -> argparse.ArgumentParser:
    """The ``xsam`` parser with every verb."""
    parser = argparse.ArgumentParser(
        prog="xsam",
        description="X-SAM: one multimodal LLM for any segmentation task, in plain PyTorch.",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        command = verb.add_parser(commands)
        # also after the verb; SUPPRESS keeps the verb's parser from resetting a --debug given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
        command.set_defaults(handler=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; expected errors print ``error: message`` and return 2 (see the module docs)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except EXPECTED_ERRORS as error:
        if args.debug or os.environ.get("XSAM_DEBUG", "") not in ("", "0"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR


__all__ = ["build_parser", "main"]
