"""Grounded conversation generation (GCG, GranD-f) prompts.

At inference the model *generates* a caption whose grounded phrases are wrapped in ``<p>…</p>``,
followed by one ``<SEG>``; every generated phrase becomes one class (in caption order). The prompt
is therefore the question alone (:func:`build_prompt`). Training (and the teacher-forced fixture)
adds the answer built from a caption and its phrase character spans (:func:`build_answer`).

Answer format (official rule, reproduced by the ``gcgseg`` fixture): every phrase span becomes
``<p>phrase</p>`` followed by **one extra space**, the caption is otherwise unchanged, the result is
stripped, and ``" " + answer template`` is appended. So ``"A cup sits on a saucer."`` with spans
``[(0, 5), (14, 22)]`` gives ``"<p>A cup</p>  sits on <p>a saucer</p> . And <SEG>."`` (two spaces
after a phrase followed by a space, ``" ."`` before the period).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .conversation import Turn
from .templates import GCG_ANSWERS, GCG_QUESTIONS, TemplateChoice, place_image, wrap_phrase


def _check_spans(caption: str, spans: Sequence[tuple[int, int]]) -> None:
    previous_end = 0
    for start, end in spans:
        if not 0 <= start < end <= len(caption):
            raise ValueError(f"phrase span ({start}, {end}) is empty or outside the caption")
        if start < previous_end:
            raise ValueError(f"phrase spans must be sorted and disjoint; ({start}, {end}) is not")
        previous_end = end


def tag_caption(caption: str, phrase_spans: Sequence[tuple[int, int]]) -> str:
    """Wrap each ``caption[start:end]`` as ``<p>phrase</p>`` plus one space; spans are character
    offsets ``[start, end)``, sorted and disjoint (their order is the class order)."""
    spans = [(int(start), int(end)) for start, end in phrase_spans]
    _check_spans(caption, spans)
    for start, end in reversed(spans):
        caption = f"{caption[:start]}{wrap_phrase(caption[start:end])} {caption[end:]}"
    return caption


def build_answer(
    caption: str, phrase_spans: Sequence[tuple[int, int]], *, answer_template: TemplateChoice = 0
) -> str:
    """The training answer: the tagged caption, stripped, one space, then the answer template (an
    index into :data:`~xsam.tasks.templates.GCG_ANSWERS` or a custom answer with one ``<SEG>``)."""
    if not phrase_spans:
        raise ValueError("a GCG answer needs at least one grounded phrase")
    return f"{tag_caption(caption, phrase_spans).strip()} {GCG_ANSWERS.render(answer_template)}"


def build_prompt(*, question_template: TemplateChoice = 0) -> list[Turn]:
    """The inference prompt: the question only; the caption, phrases and ``<SEG>`` are generated.

    ``question_template`` is an index into :data:`~xsam.tasks.templates.GCG_QUESTIONS` or a custom
    question (no placeholders; literal braces doubled, see :mod:`xsam.tasks.templates`).
    """
    return [Turn(place_image(GCG_QUESTIONS.render(question_template)))]


def build_training_prompt(
    caption: str,
    phrase_spans: Sequence[tuple[int, int]],
    *,
    question_template: TemplateChoice = 0,
    answer_template: TemplateChoice = 0,
) -> list[Turn]:
    """Question plus the teacher-forced answer of :func:`build_answer`."""
    (turn,) = build_prompt(question_template=question_template)
    turn.answer = build_answer(caption, phrase_spans, answer_template=answer_template)
    return [turn]


def sample_prompt(caption: str, phrase_spans: Sequence[tuple[int, int]], rng: random.Random) -> list[Turn]:
    """Training prompt with question and answer templates drawn with ``rng``."""
    return build_training_prompt(
        caption,
        phrase_spans,
        question_template=GCG_QUESTIONS.draw(rng),
        answer_template=GCG_ANSWERS.draw(rng),
    )
