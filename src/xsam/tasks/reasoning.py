"""Reasoning segmentation (LISA ReasonSeg).

The whole query is one condition phrase ``<p>{query}</p>`` (stripped, case kept). A full-sentence
query (``is_sentence``, ReasonSeg's "long" split) is followed by an instruction
(:data:`LONG_QUESTIONS`); a short noun phrase is embedded in a
question (:data:`SHORT_QUESTIONS`). With an explanation (LISA's
explanatory training subset) the question asks for it and the answer reads
``"{explanation} {answer}"``. Mask selection, targets and scoring are the referring ones (one
``<SEG>`` per turn); the evaluation leaves ReasonSeg's "ignore" polygons out of both masks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..tokens import IMAGE, SEG, literal
from . import referring
from .base import Draft, DraftOptions, EvalSample, MaskTruth, Metric, Prompt, TaskRequest
from .conversation import Turn
from .records import Record
from .templates import TemplateChoice, TemplateList, per_turn, place_image, wrap_phrase

LONG_QUESTIONS = TemplateList(
    "reasoning long questions",
    (
        "{query} Please output the corresponding segmentation mask.",
        "{query} Please generate a segmentation mask for this image.",
        "{query} Please extract the segmentation mask.",
        "{query} Please return the segmentation predictions as masks.",
        "{query} Please segment the image.",
    ),
    official_size=5,
)

SHORT_QUESTIONS = TemplateList(
    "reasoning short questions",
    ("Can you segment {query} in this image? Please output the segmentation mask.",),
    official_size=5,
)

EXPLANATORY_QUESTIONS = TemplateList(
    "reasoning explanatory questions",
    ("{query} Please explain why and output the corresponding segmentation mask.",),
    official_size=5,
)

# No separate plain-answer list is known for reasoning; the referring answers are used (the reaseg
# fixture's "It is <SEG>." is among them).
ANSWERS = TemplateList("reasoning answers", referring.ANSWERS.templates, official_size=5)

# Appended to the explanation with one space: "{explanation} {answer}".
EXPLANATORY_ANSWERS = TemplateList(
    "reasoning explanatory answers",
    (
        f"{SEG}.",
        f"It is {SEG}.",
        f"And {SEG}.",
        f"And it is {SEG}.",
        f"And the segmentation mask is {SEG}.",
    ),
    official_size=5,
)

EXPLANATION_PROBABILITY = 0.5
"""Official chance that a training turn with an available explanation uses the explanatory form."""


def question_templates(*, is_sentence: bool, explanatory: bool) -> TemplateList:
    """The question list a turn draws from: explanatory, else long (sentence) or short (phrase)."""
    if explanatory:
        return EXPLANATORY_QUESTIONS
    return LONG_QUESTIONS if is_sentence else SHORT_QUESTIONS


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
    irrelevant) and the answer is ``explanation + " " + EXPLANATORY_ANSWERS[i]``.
    A template choice is an index into the list :func:`question_templates` picks (answers:
    :data:`ANSWERS` or the explanatory answers) or a custom template
    string (questions with one ``{query}``, answers with one ``<SEG>``; see
    :mod:`xsam.tasks.templates`). ``answer_template=None`` leaves the answer to generation.
    """
    questions = question_templates(is_sentence=is_sentence, explanatory=explanation is not None)
    question = questions.render(question_template, query=wrap_phrase(query.strip()))
    if answer_template is None:
        return Turn(question)
    if explanation is None:
        return Turn(question, ANSWERS.render(answer_template))
    return Turn(question, f"{explanation} {EXPLANATORY_ANSWERS.render(answer_template)}")


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
        answers = EXPLANATORY_ANSWERS if explain else ANSWERS
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


def looks_like_sentence(query: str) -> bool:
    """ReasonSeg marks full-sentence queries; without the flag a query ending like a sentence or longer
    than six words is taken as one (a short noun phrase gets the short-question template)."""
    return query.rstrip().endswith(("?", ".", "!")) or len(query.split()) > 6


class ReasoningHandler(referring.ReferringHandler):
    """Reasoning segmentation: a query that names its target only implicitly, one mask out (selected,
    trained and scored as a referring expression)."""

    name = "reasoning"
    official_name = "reaseg"
    accepts = frozenset({"text", "is_sentence"})
    questions = (LONG_QUESTIONS, SHORT_QUESTIONS)
    answers = ANSWERS
    templates = (LONG_QUESTIONS, SHORT_QUESTIONS, EXPLANATORY_QUESTIONS, ANSWERS, EXPLANATORY_ANSWERS)

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> TaskRequest:
        text = referring.required_text(prompt, self.name)
        sentence = looks_like_sentence(text) if prompt.is_sentence is None else prompt.is_sentence
        return TaskRequest(self.name, build_prompt(literal(text), is_sentence=sentence), [text])

    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        """Queries of one image may differ in ``is_sentence`` / explanation: each turn is built alone."""
        if not record.expressions:
            raise ValueError(f"reasoning record {record.image_id!r} has no queries")
        turns: list[Turn] = []
        for expression in record.expressions:
            if train:
                (turn,) = sample_prompt(
                    expression.text,
                    rng,
                    is_sentence=expression.is_sentence,
                    explanation=expression.explanation,
                )
            else:
                (turn,) = build_prompt(expression.text, is_sentence=expression.is_sentence)
            if turns:
                turn.question = turn.question.replace(IMAGE, "").strip()
            turns.append(turn)
        names = [expression.text for expression in record.expressions]
        targets = referring.expression_targets(record)
        return Draft(turns, targets, class_names=names, ignore=referring.ignore_mask(record))

    def evaluation_samples(
        self, records: Sequence[Record], metric: Metric, options: dict[str, Any]
    ) -> list[EvalSample]:
        """One sample per query (the records hold one query each)."""
        samples = []
        for record in records:
            expression = record.expressions[0]
            truth = MaskTruth(
                expression.masks, record.height, record.width, ignore=record.ignore_mask, text=expression.text
            )
            request = {"task": self.name, "text": expression.text, "is_sentence": expression.is_sentence}
            key = f"{Path(record.image_path).stem}_{record.extra['query_index']}"
            samples.append(EvalSample(key, record.image_path, record.image_id, request, truth))
        return samples


REASONING = ReasoningHandler()
