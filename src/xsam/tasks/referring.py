"""Referring segmentation prompts (RefCOCO / RefCOCO+ / RefCOCOg).

One turn per referring expression, each answered by one ``<SEG>``: evaluation asks one expression,
training puts all expressions of an image into one multi-turn conversation. The expression is
stripped and lower-cased inside ``<p>…</p>``; its condition embedding is the single class of its
``<SEG>`` (the decoder runs once per ``<SEG>``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .conversation import Turn
from .templates import (
    REFERRING_ANSWERS,
    REFERRING_QUESTIONS,
    TemplateChoice,
    per_turn,
    place_image,
    wrap_phrase,
)


def format_expression(expression: str) -> str:
    """``" The Flag Patch "`` -> ``"<p>the flag patch</p>"``."""
    return wrap_phrase(expression.strip().lower())


def build_question(expression: str, *, question_template: TemplateChoice = 0) -> str:
    """The question of one turn, without the image placeholder; ``question_template`` is an index
    into :data:`~xsam.tasks.templates.REFERRING_QUESTIONS` or a custom template with one
    ``{expression}`` placeholder."""
    return REFERRING_QUESTIONS.render(question_template, expression=format_expression(expression))


def build_prompt(
    expressions: str | Sequence[str],
    *,
    question_template: TemplateChoice | Sequence[TemplateChoice] = 0,
    answer_template: TemplateChoice | Sequence[TemplateChoice] | None = 0,
) -> list[Turn]:
    """One turn per expression; ``<image>\\n`` opens the first question.

    A template choice is an index into :data:`~xsam.tasks.templates.REFERRING_QUESTIONS` /
    :data:`~xsam.tasks.templates.REFERRING_ANSWERS` or a custom template string (questions with one
    ``{expression}``, answers with one ``<SEG>``; see :mod:`xsam.tasks.templates`); give one choice
    for every turn or a sequence with one per turn. ``answer_template=None`` leaves the answer to
    generation, which needs exactly one expression (only the last turn may be open).
    """
    expressions = [expressions] if isinstance(expressions, str) else list(expressions)
    if not expressions:
        raise ValueError("referring segmentation needs at least one expression")
    if answer_template is None and len(expressions) > 1:
        raise ValueError("a generation prompt (answer_template=None) takes exactly one expression")
    questions = per_turn(question_template, len(expressions), "question_template")
    answers = per_turn(answer_template, len(expressions), "answer_template")
    turns = []
    for expression, question_choice, answer_choice in zip(expressions, questions, answers, strict=True):
        question = build_question(expression, question_template=question_choice)
        answer = None if answer_choice is None else REFERRING_ANSWERS.render(answer_choice)
        turns.append(Turn(question, answer))
    turns[0].question = place_image(turns[0].question)
    return turns


def sample_prompt(expressions: str | Sequence[str], rng: random.Random) -> list[Turn]:
    """Training prompt: every turn draws its question and answer template with ``rng``."""
    count = 1 if isinstance(expressions, str) else len(expressions)
    questions = [REFERRING_QUESTIONS.draw(rng) for _ in range(count)]
    answers = [REFERRING_ANSWERS.draw(rng) for _ in range(count)]
    return build_prompt(expressions, question_template=questions, answer_template=answers)
