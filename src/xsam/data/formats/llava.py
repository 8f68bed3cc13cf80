"""LLaVA conversation data (``llava_v1_5_mix665k.json``, ``blip_laion_cc_sbu_558k.json``) for the
image-conversation task.

The file is a list of ``{"id", "image"?, "conversations": [{"from": "human" | "gpt", "value"}]}``
where ``image`` is a path relative to the image root. Turns are kept exactly as stored, including
wherever the ``<image>`` placeholder sits: the chat task (:func:`xsam.tasks.chat.from_llava`) moves it
to the start of its message as ``<image>\\n``. Samples without ``image`` are text-only and kept
(``image_path=None``; officially fed with a zero image and no ``<image>`` token).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from xsam.tasks.records import Record

PathLike = str | os.PathLike
ROLES = ("human", "gpt")


def _conversations(value: object, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list")
    turns = []
    for index, message in enumerate(value):
        at = f"{where}: conversations[{index}]"
        if not isinstance(message, Mapping) or "from" not in message or "value" not in message:
            raise ValueError(f"{at}: expected an object with 'from' and 'value'")
        if message["from"] not in ROLES:
            raise ValueError(f"{at}: unknown role {message['from']!r}; expected one of {ROLES}")
        if not isinstance(message["value"], str):
            raise ValueError(f"{at}: 'value' must be a string")
        turns.append({"from": message["from"], "value": message["value"]})
    return turns


def read_llava(json_path: PathLike, image_dir: PathLike, *, source: str = "llava") -> list[Record]:
    """One ``Record(task="chat")`` per sample, in file order.

    ``image_path`` is ``image_dir / image`` (None for text-only samples); the image is not opened,
    so ``height`` and ``width`` are 0 (unknown until the image is loaded; chat has no masks).
    ``image_id`` is the sample's ``id`` (None when absent). Raises FileNotFoundError for a missing
    file and ValueError, naming the file, the entry and the key, for a malformed sample.
    """
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(data).__name__}")
    records = []
    for index, sample in enumerate(data):
        if not isinstance(sample, Mapping):
            raise ValueError(f"{path}: entry {index}: expected a JSON object")
        where = f"{path}: entry {index} (id {sample.get('id')!r})"
        if "conversations" not in sample:
            raise ValueError(f"{where}: missing key 'conversations'")
        image = sample.get("image")
        records.append(
            Record(
                task="chat",
                image_path=Path(image_dir) / image if image else None,
                height=0,
                width=0,
                image_id=sample.get("id"),
                source=source,
                conversations=_conversations(sample["conversations"], where),
            )
        )
    return records
