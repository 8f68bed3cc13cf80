"""Pretrained I/O: the ``save_pretrained`` / ``from_pretrained`` directory and the bundled default model.

A directory holds ``config.json`` (the :class:`~xsam.config.XSamConfig` plus a format version) and
``model.safetensors`` (sharded when large), and may hold a tokenizer (``xsam convert`` writes the
checkpoint's; without one the bundled Phi-3 tokenizer is used). The model itself owns no tokenizer:
the predictor loads it from :func:`tokenizer_directory`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from accelerate import init_empty_weights
from huggingface_hub.errors import StrictDataclassError

from ..config import XSamConfig
from .serialization import (
    CONFIG_NAME,
    DEFAULT_MAX_SHARD_BYTES,
    assign_state,
    check_keys,
    iter_tensors,
    tied_aliases,
    weight_files,
    write_directory,
)

if TYPE_CHECKING:
    from .xsam import XSamModel

FORMAT_KEY = "xsam_format"
FORMAT_VERSION = 1
DEFAULT_MODEL = "default"
"""The name that :meth:`XSamModel.from_pretrained` resolves to the bundled default model."""
TOKENIZER_FILE = "tokenizer_config.json"
"""Marks a directory that carries its own tokenizer."""

_ModelT = TypeVar("_ModelT", bound="XSamModel")


def bundled_model_directory() -> Path:
    """The folder of the default model shipped inside the package (``xsam/assets/default-model``)."""
    return Path(__file__).resolve().parents[1] / "assets" / "default-model"


def resolve_model_directory(name_or_path: str | Path) -> Path:
    """``"default"`` (unless a folder of that name exists here) is the bundled model; anything else
    is a path.

    Raises:
        FileNotFoundError: ``"default"`` was asked for but this installation lacks the bundled model.
    """
    path = Path(name_or_path)
    if str(name_or_path) != DEFAULT_MODEL or path.exists():
        return path
    bundled = bundled_model_directory()
    if not (bundled / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing from this installation ({bundled}); "
            "reproduce it with recipes/default-model/train.sh"
        )
    return bundled


def load_config(directory: str | Path) -> XSamConfig:
    """The :class:`XSamConfig` of a saved model directory (or ``"default"``), format version checked.

    Raises:
        FileNotFoundError: the folder does not exist, or has no ``config.json``.
        NotADirectoryError: ``directory`` is a file.
        ValueError: ``config.json`` is not JSON, not an xsam-torch config of this format version, or
            holds a value of the wrong type; the message names the file and the key.
    """
    folder = resolve_model_directory(directory)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a model folder")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not an xsam-torch model directory")
    try:
        data = json.loads(config_path.read_text())
    except ValueError as error:  # bad JSON or bad UTF-8
        raise ValueError(f"{config_path} is not valid JSON ({error})") from error
    if not isinstance(data, dict) or data.pop(FORMAT_KEY, None) != FORMAT_VERSION:
        raise ValueError(f"{config_path} is not an xsam-torch config (format {FORMAT_VERSION} expected)")
    try:
        return XSamConfig.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from error


def config_dict(config: XSamConfig) -> dict:
    """What ``config.json`` holds: the config plus the format version."""
    return {FORMAT_KEY: FORMAT_VERSION, **config.to_dict()}


def tokenizer_directory(directory: str | Path | None) -> Path | None:
    """``directory`` when it carries a tokenizer, else None (use the bundled one)."""
    if directory is None:
        return None
    path = Path(directory)
    return path if (path / TOKENIZER_FILE).is_file() else None


def copy_tokenizer(source: str | Path | None, target: str | Path) -> None:
    """Copy the tokenizer files of model directory ``source`` (if it has any) into ``target``."""
    folder = tokenizer_directory(source)
    if folder is None:
        return
    for path in folder.iterdir():
        if path.is_file() and (
            path.name.startswith(("tokenizer", "special_tokens")) or path.suffix == ".model"
        ):
            shutil.copy2(path, Path(target) / path.name)


def save_pretrained(
    model: XSamModel, directory: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> None:
    """Write ``config.json`` and ``model.safetensors`` (sharded above ``max_shard_bytes``); tied
    duplicates are stored once."""
    aliases = tied_aliases(model)
    state = {k: v for k, v in model.state_dict().items() if k not in aliases}
    write_directory(directory, state, config_dict(model.config), max_shard_bytes=max_shard_bytes)


def from_pretrained(
    cls: type[_ModelT],
    directory: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    allow_missing: bool = False,
) -> _ModelT:
    """Build ``cls`` from a :func:`save_pretrained` directory; see :meth:`XSamModel.from_pretrained`.

    Raises:
        FileNotFoundError: no such folder, no ``config.json``, no weights.
        ValueError: ``config.json`` or a weight file is unreadable, a value has the wrong type, or a
            tensor has the wrong shape for the config; the message names the file and the key.
        KeyError: tensors missing (or, when ``strict``, unexpected), by name.
    """
    if dtype is None and str(directory) == DEFAULT_MODEL:
        dtype = torch.float32  # 16-bit storage only keeps the package small
    folder = resolve_model_directory(directory)
    model = _build(cls, load_config(folder), folder / CONFIG_NAME, empty=not allow_missing)
    aliases = tied_aliases(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in aliases}
    state = dict(iter_tensors(weight_files(folder), dtype=dtype, device=device, shapes=shapes))
    present = set(shapes) if not allow_missing else set(shapes) & set(state)
    check_keys(present, set(state), strict=strict, source=str(folder))
    state = {k: v for k, v in state.items() if k in shapes}
    if allow_missing:
        model.load_state_dict(state, strict=False)
    else:
        assign_state(model, state, aliases)
    model.to(device)
    if allow_missing and dtype is not None:
        model.to(dtype)
    model.name_or_path = str(folder)
    return model.eval()


def _build(cls: type[_ModelT], config: XSamConfig, config_path: Path, *, empty: bool) -> _ModelT:
    """``cls(config)``, on the meta device when ``empty``. A config whose types check out can still
    fail to build (a ``language_model.hf_config`` value transformers rejects, sizes that do not
    divide): that is bad input too, reported against the file."""
    try:
        if not empty:
            return cls(config)
        with init_empty_weights(include_buffers=False):
            return cls(config)
    except (TypeError, ValueError, KeyError, StrictDataclassError) as error:
        reason = f"missing key {error}" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise ValueError(f"{config_path}: the model cannot be built from this config ({reason})") from error
