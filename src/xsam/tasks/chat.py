"""Image conversation (LLaVA-style chat): no templates, no segmentation, language loss only.

LLaVA data stores ``conversations`` as ``[{"from": "human" | "gpt", "value": ...}, ...]`` with an
``<image>`` placeholder somewhere in a human message. The official mapping (reproduced here) moves
it to the start of that message as ``<image>\\n`` and pairs every run of human messages with the
next gpt message; leading gpt messages are skipped. Text-only samples keep no placeholder. At
inference the predictor keeps the conversation per image (:attr:`ChatHandler.keeps_history`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch

from ..processing import Frame
from ..tokens import IMAGE, literal
from .base import Draft, DraftOptions, Prompt, TaskHandler, TaskRequest
from .conversation import Turn
from .gcg import text_prediction
from .prediction import Prediction
from .records import Record
from .referring import required_text
from .templates import place_image

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


def history_turns(pairs: Sequence[tuple[str, str]]) -> list[Turn]:
    """A caller's ``(question, answer)`` pairs as answered turns: both texts made literal (no control
    tokens), ``<image>`` before the first question.

    Raises:
        ValueError: a pair that is not two strings, or a blank question.
    """
    turns = []
    for index, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise ValueError(f"history turn {index} must be a (question, answer) pair of strings")
        if not pair[0].strip():
            raise ValueError(f"history turn {index} has a blank question")
        turns.append(Turn(literal(pair[0]), literal(pair[1])))
    if turns:
        turns[0].question = place_image(turns[0].question)
    return turns


class ChatHandler(TaskHandler):
    """Image chat: a message in, the model's answer out; earlier turns come from the history."""

    name = "chat"
    official_name = "imgconv"
    accepts = frozenset({"text", "history"})
    generates = True
    segments = False
    keeps_history = True

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> TaskRequest:
        text = literal(required_text(prompt, self.name))
        if prompt.history is not None:
            history = history_turns(prompt.history)
        return TaskRequest(self.name, build_prompt(text, history=history), [])

    def interpret(
        self, request: TaskRequest, text: str, logits: tuple[torch.Tensor, torch.Tensor] | None, frame: Frame
    ) -> Prediction:
        return text_prediction(self.name, text, frame)

    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        """LLaVA turns; a trailing unanswered question is dropped in training (as officially)."""
        turns = from_llava(record.conversations)
        if train and turns and turns[-1].answer is None:
            turns = turns[:-1]
        if not turns:
            raise ValueError(f"chat record {record.image_id!r} has no answered turn")
        has_placeholder = any(IMAGE in turn.question for turn in turns)
        if record.image_path is None and has_placeholder:
            raise ValueError(f"chat record {record.image_id!r} has an <image> placeholder but no image")
        if record.image_path is not None and not has_placeholder:
            turns[0].question = place_image(turns[0].question)
        return Draft(turns)


CHAT = ChatHandler()
