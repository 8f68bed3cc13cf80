"""Image conversation (LLaVA-style chat) prompts: no templates, no segmentation, language loss only.

LLaVA data stores ``conversations`` as ``[{"from": "human" | "gpt", "value": ...}, ...]`` with an
``<image>`` placeholder somewhere in a human message. The official mapping (reproduced here) moves
it to the start of that message as ``<image>\\n`` and pairs every run of human messages with the
next gpt message; leading gpt messages are skipped. Text-only samples keep no placeholder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .conversation import Turn
from .templates import IMAGE, place_image

_ROLES = ("human", "gpt")


def from_llava(conversations: Sequence[Mapping[str, str]]) -> list[Turn]:
    """LLaVA messages -> turns.

    A trailing human message without reply becomes an open last turn (a generation prompt); the
    official training mapping drops it instead. Raises ValueError on an unknown ``from`` role.
    """
    turns: list[Turn] = []
    question = ""
    started = False
    for message in conversations:
        role, value = message["from"], message["value"]
        if role not in _ROLES:
            raise ValueError(f"unknown conversation role {role!r}; expected one of {_ROLES}")
        if role == "gpt":
            if started:
                turns.append(Turn(question, value))
            question = ""
            continue
        started = True
        question += place_image(value) if IMAGE in value else value
    if question:
        turns.append(Turn(question))
    return turns


def build_prompt(question: str, *, history: Sequence[Turn] = (), image: bool = True) -> list[Turn]:
    """A generation prompt: ``history`` (answered turns) followed by ``question``.

    Without history and with ``image`` the question gets the ``<image>\\n`` prefix; with history the
    image placeholder is expected in its first turn already.
    """
    if any(turn.answer is None for turn in history):
        raise ValueError("every history turn needs an answer")
    if not history and image:
        question = place_image(question)
    return [*history, Turn(question)]
