"""Checked access to annotation JSON: errors name the file, the entry and the key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PathLike = str | Path


def load_json(path: PathLike) -> Any:
    """Parse ``path``; a missing file or invalid JSON raises with the path in the message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def field(entry: Any, key: str, where: str) -> Any:
    """``entry[key]`` of a JSON object; ``where`` names the entry in errors."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{where}: missing key {key!r}")
    return entry[key]


def as_list(value: Any, what: str, where: str) -> list:
    """``value`` if it is a JSON list, else an error naming ``what`` and ``where``."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: {what} must be a JSON list, got {type(value).__name__}")
    return value
