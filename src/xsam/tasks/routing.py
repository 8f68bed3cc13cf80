"""``task="auto"``: the task a prompt asks for, read from what it contains. One function, used by the
predictor, so the CLI (``--task auto``), the HTTP server and the demo route the same way.

The rules, in order:

1. categories given, or text in the category syntax (``ins: …`` / ``sem: …``) -> ``generic``;
2. visual prompts: one -> ``interactive``, several -> ``vgd``;
3. no text -> ``gcg`` (describe the image and segment what the caption names);
4. text that asks to segment, mark or find something -> ``referring`` when it is a short phrase, else
   ``reasoning``;
5. a question (ending in ``?``) -> ``chat``;
6. a short phrase (at most six words, no sentence-ending punctuation) -> ``referring``;
7. anything else (a sentence) -> ``reasoning``.
"""

from __future__ import annotations

import re

import numpy as np

from .base import Prompt
from .task import Task

AUTO = "auto"
"""The task name that asks for routing."""

_CATEGORY_SYNTAX = re.compile(r"^\s*(ins|sem)\s*:", re.IGNORECASE)
_SEGMENTATION_INTENT = re.compile(
    r"\b(segment\w*|mask\w*|highlight\w*|outline\w*|find|locate|where|which (object|part|thing|one)s?)\b",
    re.IGNORECASE,
)
_SHORT_PHRASE_WORDS = 6


def route(prompt: Prompt) -> Task:
    """The task ``prompt`` asks for (see the module docstring for the rules)."""
    text = (prompt.text or "").strip()
    if prompt.categories is not None or _CATEGORY_SYNTAX.match(text):
        return Task.GENERIC
    regions = _count_visual_prompts(prompt)
    if regions:
        return Task.INTERACTIVE if regions == 1 else Task.VGD
    if not text:
        return Task.GCG
    short = len(text.split()) <= _SHORT_PHRASE_WORDS and not text.endswith((".", "!", "?"))
    if _SEGMENTATION_INTENT.search(text):
        return Task.REFERRING if short else Task.REASONING
    if text.endswith("?"):
        return Task.CHAT
    return Task.REFERRING if short else Task.REASONING


def routed_prompt(prompt: Prompt) -> Prompt:
    """``prompt`` as its routed task takes it: text in the category syntax becomes the categories."""
    text = (prompt.text or "").strip()
    if prompt.categories is None and _CATEGORY_SYNTAX.match(text):
        return Prompt(categories=text, closed_set=prompt.closed_set)
    return prompt


def _count_visual_prompts(prompt: Prompt) -> int:
    """How many regions the visual prompts make (without checking them: the task does that)."""
    count = 0
    for values, width in ((prompt.points, 2), (prompt.boxes, 4)):
        if values is not None:
            count += max(1, np.size(values) // width)
    if prompt.scribbles is not None:
        count += len(prompt.scribbles)
    if prompt.masks is not None:
        count += 1 if np.ndim(prompt.masks) == 2 else max(1, len(prompt.masks))
    return count
