"""Visual grounded segmentation (VGD) prompts: segment everything like each marked region.

Each visual prompt (point, scribble, box or mask drawn on the image) is one condition phrase
``<p><region></p>``; ``<region>`` is a placeholder whose embedding is the region feature sampled
from the visual prompt (tokenised as a sentinel id, see :mod:`xsam.tasks.conversation`). The
phrases are joined by ``", "`` in prompt order, which is the class order.
"""

from __future__ import annotations

import random

from .conversation import Turn
from .templates import (
    REGION,
    VISUAL_GROUNDING_ANSWERS,
    VISUAL_GROUNDING_QUESTIONS,
    TemplateChoice,
    place_image,
    wrap_phrase,
)


def format_regions(num_regions: int) -> str:
    """``3`` -> ``"<p><region></p>, <p><region></p>, <p><region></p>"``."""
    if num_regions < 1:
        raise ValueError(f"need at least one region prompt, got {num_regions}")
    return ", ".join([wrap_phrase(REGION)] * num_regions)


def build_prompt(
    num_regions: int,
    *,
    question_template: TemplateChoice = 0,
    answer_template: TemplateChoice | None = 0,
) -> list[Turn]:
    """One turn over ``num_regions`` region prompts.

    ``question_template`` indexes :data:`~xsam.tasks.templates.VISUAL_GROUNDING_QUESTIONS` or is a
    custom template with one ``{regions}`` placeholder (the regions are filled in there; the
    template itself must not contain ``<region>``); ``answer_template`` indexes
    :data:`~xsam.tasks.templates.VISUAL_GROUNDING_ANSWERS` or is a custom answer with one
    ``<SEG>``, and None leaves the answer to generation. See :mod:`xsam.tasks.templates`.
    """
    question = VISUAL_GROUNDING_QUESTIONS.render(question_template, regions=format_regions(num_regions))
    answer = None if answer_template is None else VISUAL_GROUNDING_ANSWERS.render(answer_template)
    return [Turn(place_image(question), answer)]


def sample_prompt(num_regions: int, rng: random.Random) -> list[Turn]:
    """Training prompt with question and answer templates drawn with ``rng``."""
    return build_prompt(
        num_regions,
        question_template=VISUAL_GROUNDING_QUESTIONS.draw(rng),
        answer_template=VISUAL_GROUNDING_ANSWERS.draw(rng),
    )
