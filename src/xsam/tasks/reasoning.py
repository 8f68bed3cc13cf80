"""Reasoning segmentation prompts (LISA ReasonSeg).

The whole query is one condition phrase ``<p>{query}</p>`` (stripped, case kept). A full-sentence
query (``is_sentence``, ReasonSeg's "long" split) is followed by an instruction
(:data:`~xsam.tasks.templates.REASONING_LONG_QUESTIONS`); a short noun phrase is embedded in a
question (:data:`~xsam.tasks.templates.REASONING_SHORT_QUESTIONS`). With an explanation (LISA's
explanatory training subset) the question asks for it and the answer reads
``"{explanation} {answer}"``. Mask selection is the referring one (one ``<SEG>`` per turn).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .conversation import Turn
from .templates import (
    REASONING_ANSWERS,
    REASONING_EXPLANATORY_ANSWERS,
    REASONING_EXPLANATORY_QUESTIONS,
    REASONING_LONG_QUESTIONS,
    REASONING_SHORT_QUESTIONS,
    TemplateChoice,
    TemplateList,
    per_turn,
    place_image,
    wrap_phrase,
)

EXPLANATION_PROBABILITY = 0.5
"""Official chance that a training turn with an available explanation uses the explanatory form."""


def question_templates(*, is_sentence: bool, explanatory: bool) -> TemplateList:
    """The question list a turn draws from: explanatory, else long (sentence) or short (phrase)."""
    if explanatory:
        return REASONING_EXPLANATORY_QUESTIONS
    return REASONING_LONG_QUESTIONS if is_sentence else REASONING_SHORT_QUESTIONS


def build_turn(
    query: str,
    *,
    is_sentence: bool,
    explanation: str | None = None,
    question_template: TemplateChoice = 0,
    answer_template: TemplateChoice | None = 0,
) -> Turn:
    """One (question, answer) turn, without the image placeholder.

    With ``explanation`` the question comes from the explanatory list (``is_sentence`` is then
    irrelevant) and the answer is ``explanation + " " + REASONING_EXPLANATORY_ANSWERS[i]``.
    A template choice is an index into the list :func:`question_templates` picks (answers:
    :data:`~xsam.tasks.templates.REASONING_ANSWERS` or the explanatory answers) or a custom template
    string (questions with one ``{query}``, answers with one ``<SEG>``; see
    :mod:`xsam.tasks.templates`). ``answer_template=None`` leaves the answer to generation.
    """
    questions = question_templates(is_sentence=is_sentence, explanatory=explanation is not None)
    question = questions.render(question_template, query=wrap_phrase(query.strip()))
    if answer_template is None:
        return Turn(question)
    if explanation is None:
        return Turn(question, REASONING_ANSWERS.render(answer_template))
    return Turn(question, f"{explanation} {REASONING_EXPLANATORY_ANSWERS.render(answer_template)}")


def build_prompt(
    queries: str | Sequence[str],
    *,
    is_sentence: bool,
    explanation: str | None = None,
    question_template: TemplateChoice | Sequence[TemplateChoice] = 0,
    answer_template: TemplateChoice | Sequence[TemplateChoice] | None = 0,
) -> list[Turn]:
    """One turn per query (evaluation: one); ``<image>\\n`` opens the first question.

    Template choices (indices or custom template strings, see :func:`build_turn`) are one for every
    turn or a sequence with one per turn; ``answer_template=None`` (one query only) leaves the
    answer to generation. ``explanation`` applies to every turn.
    """
    queries = [queries] if isinstance(queries, str) else list(queries)
    if not queries:
        raise ValueError("reasoning segmentation needs at least one query")
    if answer_template is None and len(queries) > 1:
        raise ValueError("a generation prompt (answer_template=None) takes exactly one query")
    questions = per_turn(question_template, len(queries), "question_template")
    answers = per_turn(answer_template, len(queries), "answer_template")
    turns = [
        build_turn(
            query,
            is_sentence=is_sentence,
            explanation=explanation,
            question_template=question_choice,
            answer_template=answer_choice,
        )
        for query, question_choice, answer_choice in zip(queries, questions, answers, strict=True)
    ]
    turns[0].question = place_image(turns[0].question)
    return turns


def sample_prompt(
    queries: str | Sequence[str],
    rng: random.Random,
    *,
    is_sentence: bool,
    explanation: str | None = None,
) -> list[Turn]:
    """Training prompt: per turn, with an explanation available, the explanatory form is used with
    probability :data:`EXPLANATION_PROBABILITY`; templates are drawn with ``rng``."""
    queries = [queries] if isinstance(queries, str) else list(queries)
    if not queries:
        raise ValueError("reasoning segmentation needs at least one query")
    turns = []
    for query in queries:
        explain = explanation is not None and rng.random() < EXPLANATION_PROBABILITY
        questions = question_templates(is_sentence=is_sentence, explanatory=explain)
        answers = REASONING_EXPLANATORY_ANSWERS if explain else REASONING_ANSWERS
        turn = build_turn(
            query,
            is_sentence=is_sentence,
            explanation=explanation if explain else None,
            question_template=questions.draw(rng),
            answer_template=answers.draw(rng),
        )
        turns.append(turn)
    turns[0].question = place_image(turns[0].question)
    return turns
