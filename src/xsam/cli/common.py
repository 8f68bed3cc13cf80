"""What several verbs share: argument types, the lazily filled help texts, model loading."""

from __future__ import annotations

import argparse
import math
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..modeling.xsam import XSamModel

DTYPES = ("fp32", "bf16")


def integer_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``minimum..maximum`` (no upper bound when None)."""
    wanted = f"an integer >= {minimum}" if maximum is None else f"{minimum} <= N <= {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    return parse


positive = integer_in(1)
"""An integer >= 1 (argparse type)."""


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


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket on ``host:port``; a clear error when the address cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener


def add_face_arguments(parser: argparse.ArgumentParser, port: int) -> None:
    """The flags every face that serves a model shares: which model, where it runs, where it listens,
    and the largest image it takes."""
    parser.add_argument(
        "--model", default="default", metavar="DIR", help="a model directory (default: bundled)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    parser.add_argument("--port", type=positive, default=port, help=f"port to listen on (default: {port})")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights dtype")
    parser.add_argument(
        "--max-image-pixels", type=positive, default=64_000_000, metavar="N", help="refuse larger images"
    )


def model_name(model: str) -> str:
    """How a face names the model of ``--model``: ``default`` or the folder's name."""
    return "default" if model == "default" else Path(model).name
