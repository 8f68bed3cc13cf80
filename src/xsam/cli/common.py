"""What several verbs share: argument types, the lazily filled help texts, model loading."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..modeling.xsam import XSamModel

DTYPES = ("fp32", "bf16")


def positive(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def key_values(items: Sequence[str] | None, flag: str, convert: Callable[[str], Any] = str) -> dict[str, Any]:
    """``KEY=VALUE`` command-line items as a dict, values passed through ``convert``.

    Raises:
        ValueError: an item is not ``KEY=VALUE`` or its value does not convert.
    """
    pairs = {}
    for item in items or []:
        key, equals, value = (part.strip() for part in item.partition("="))
        try:
            pairs[key] = convert(value)
        except ValueError:
            equals = ""
        if not equals or not key or not value:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
    return pairs


def load_model(model: str, dtype: str, device: Any) -> XSamModel:
    """The model directory (or ``default``) in ``dtype`` (``fp32`` / ``bf16``) on ``device``."""
    import torch

    from ..modeling.xsam import XSamModel

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return XSamModel.from_pretrained(model, dtype=torch_dtype, device=device)


DATA_FORMATS, BENCHMARKS, SCORE_NAMES = "{data formats}", "{benchmarks}", "{score names}"


class LazyHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills in the data formats, the benchmark table and the score names only when help is printed
    (building them imports torch)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if DATA_FORMATS in text:
            from ..data.sources import readers_help

            text = text.replace(DATA_FORMATS, readers_help())
        if BENCHMARKS in text:
            from ..eval.benchmarks import benchmarks_help

            text = text.replace(BENCHMARKS, benchmarks_help())
        if SCORE_NAMES in text:
            from ..eval.score import score_names

            text = text.replace(SCORE_NAMES, ", ".join(score_names()))
        return super()._fill_text(text, width, indent)
