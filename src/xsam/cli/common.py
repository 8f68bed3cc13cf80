"""What several verbs share: argument types, the lazily filled help texts, model loading."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
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
    if not 0 < value < math.inf:  # inf and nan pass float() but no command
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
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
    """The model directory (or ``default``) in ``dtype`` (``fp32`` / ``bf16``) on ``device``.

    Raises:
        ValueError: ``device`` is not a torch device, or one this machine does not have.
    """
    import torch

    from ..modeling.xsam import XSamModel

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return XSamModel.from_pretrained(model, dtype=torch_dtype, device=available_device(device))


def available_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` that exists here (``--device``), or a ValueError saying why not."""
    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: CUDA is not available (torch {torch.__version__}); use --device cpu"
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    return resolved


def output_folder(path: str) -> Path:
    """``--out``: a folder, created if needed (a NotADirectoryError when a file is in the way)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--out {folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
