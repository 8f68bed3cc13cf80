"""``xsam`` command line: one module per verb, each with ``add_parser`` and ``run``.

Verbs import their heavy dependencies only when they run. Expected errors (bad arguments, missing or
malformed files) are raised as exceptions by the library and turned into one line on stderr and exit
code 2 here, in :func:`main`, and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import convert, describe, predict, score, synth, train
from . import eval as evaluate

VERBS = (describe, convert, predict, train, evaluate, score, synth)

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


def build_parser() -> argparse.ArgumentParser:
    """The ``xsam`` parser with every verb."""
    parser = argparse.ArgumentParser(
        prog="xsam",
        description="X-SAM: one multimodal LLM for any segmentation task, in plain PyTorch.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(commands).set_defaults(handler=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; expected errors print ``xsam VERB: message`` and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except EXPECTED_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"xsam {args.command}: {message}", file=sys.stderr)
        return USAGE_ERROR


__all__ = ["build_parser", "main"]
