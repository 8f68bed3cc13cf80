"""Referring segmentation (RefCOCO / RefCOCO+ / RefCOCOg).

One turn per referring expression, each answered by one ``<SEG>``: evaluation asks one expression,
training puts all expressions of an image into one multi-turn conversation. The expression is
stripped and lower-cased inside ``<p>…</p>``; its condition embedding is the single class of its
``<SEG>`` (the decoder runs once per ``<SEG>``). One target per ``<SEG>`` holds the union of that
expression's masks, labelled with the expression's index in the sample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..processing import Frame, postprocess_masks
from ..tokens import SEG, literal
from .base import (
    Draft,
    DraftOptions,
    EvalSample,
    MaskTruth,
    Metric,
    Prompt,
    TargetDraft,
    TaskHandler,
    TaskRequest,
)
from .conversation import Turn
from .mask_classification import MaskResult, class_probabilities, require_single_class
from .prediction import Prediction
from .records import Record, union_masks
from .templates import TemplateChoice, TemplateList, per_turn, place_image, wrap_phrase

QUESTIONS = TemplateList(
    "referring questions",
    (
        "Please identify and segment the {expression} in this image.",
        "Please segment {expression} in this image.",
        "What is {expression} in this image? Please output the corresponding segmentation mask.",
        "Can you segment {expression} in this image? Please generate the segmentation mask.",
        "Could you provide a segmentation mask for the {expression} in this image? "
        "Please provide the segmentation mask.",
        "Where is the {expression} in this picture? Please output the segmentation masks.",
        "Can you highlight the {expression} in this image with a segmentation mask? "
        "Please output the segmentation mask.",
    ),
    official_size=10,
)

ANSWERS = TemplateList(
    "referring answers",
    (
        f"{SEG}.",
        f"It is {SEG}.",
        f"Sure, {SEG}.",
        f"Sure, it is {SEG}.",
        f"Sure, the segmentation mask is {SEG}.",
    ),
    official_size=5,
)


def format_expression(expression: str) -> str:
    """``" The Flag Patch "`` -> ``"<p>the flag patch</p>"``."""
    return wrap_phrase(expression.strip().lower())


def build_question(expression: str, *, question_template: TemplateChoice = 0) -> str:
    """The question of one turn, without the image placeholder; ``question_template`` is an index
    into :data:`QUESTIONS` or a custom template with one ``{expression}`` placeholder."""
    return QUESTIONS.render(question_template, expression=format_expression(expression))


def build_prompt(
    expressions: str | Sequence[str],
    *,
    question_template: TemplateChoice | Sequence[TemplateChoice] = 0,
    answer_template: TemplateChoice | Sequence[TemplateChoice] | None = 0,
) -> list[Turn]:
    """One turn per expression; ``<image>\\n`` opens the first question.

    A template choice is an index into :data:`QUESTIONS` / :data:`ANSWERS` or a custom template
    string (questions with one ``{expression}``, answers with one ``<SEG>``; see
    :mod:`xsam.tasks.templates`); give one choice for every turn or a sequence with one per turn.
    ``answer_template=None`` leaves the answer to generation, which needs exactly one expression (only
    the last turn may be open).
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
        answer = None if answer_choice is None else ANSWERS.render(answer_choice)
        turns.append(Turn(question, answer))
    turns[0].question = place_image(turns[0].question)
    return turns


def sample_prompt(expressions: str | Sequence[str], rng: random.Random) -> list[Turn]:
    """Training prompt: every turn draws its question and answer template with ``rng``."""
    count = 1 if isinstance(expressions, str) else len(expressions)
    questions = [QUESTIONS.draw(rng) for _ in range(count)]
    answers = [ANSWERS.draw(rng) for _ in range(count)]
    return build_prompt(expressions, question_template=questions, answer_template=answers)


def referring(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, frame: Frame, *, mask_threshold: float = 0.5
) -> MaskResult:
    """Referring and reasoning segmentation (official ``refseg_postprocess_fn``; reaseg uses it too).

    The query with the highest probability of the single phrase (softmax over [phrase, background];
    first query on ties) gives the mask ``sigmoid > mask_threshold`` (strict). Only that mask is
    upsampled. For several phrases use :func:`xsam.tasks.gcg.grounded_conversation`.
    """
    probabilities = class_probabilities(class_logits, mask_logits)
    require_single_class(probabilities, "referring segmentation")
    top_score, top_query = probabilities.max(dim=0)
    logits = postprocess_masks(mask_logits[top_query], frame)
    return MaskResult(logits.sigmoid()[0] > mask_threshold, float(top_score), int(top_query))


def required_text(prompt: Prompt, task: str) -> str:
    """The prompt's non-blank text, or a ValueError naming the task."""
    if not (prompt.text and prompt.text.strip()):
        raise ValueError(f"task '{task}' needs text=")
    return prompt.text


def expression_targets(record: Record) -> list[TargetDraft]:
    """One target per expression: the union of its masks, labelled with its index."""
    return [
        TargetDraft([i], [union_masks(expression.masks, record.height, record.width)])
        for i, expression in enumerate(record.expressions)
    ]


def ignore_mask(record: Record) -> np.ndarray | None:
    """The record's decoded ignore mask, if it has one."""
    return None if record.ignore_mask is None else record.ignore_mask.decode()


class ReferringHandler(TaskHandler):
    """Referring segmentation: an expression in, the one mask it refers to out."""

    name = "referring"
    official_name = "refseg"
    accepts = frozenset({"text"})
    decode_per_seg = True
    mask_threshold = 0.5
    metrics = (Metric.MASK_IOU,)
    questions = (QUESTIONS,)
    answers = ANSWERS
    templates = (QUESTIONS, ANSWERS)

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> TaskRequest:
        text = required_text(prompt, self.name)
        return TaskRequest(self.name, build_prompt(literal(text)), [text])

    def postprocess(
        self,
        request: TaskRequest,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        frame: Frame,
        threshold: float | None,
    ) -> Prediction:
        mask_threshold = self.mask_threshold if threshold is None else threshold
        result = referring(class_logits, mask_logits, frame, mask_threshold=mask_threshold)
        return Prediction(self.name, result.mask[None].cpu(), request.labels, [float(result.score)])

    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        texts = [expression.text for expression in record.expressions]
        if not texts:
            raise ValueError(f"referring record {record.image_id!r} has no expressions")
        turns = sample_prompt(texts, rng) if train else build_prompt(texts)
        return Draft(turns, expression_targets(record), class_names=texts, ignore=ignore_mask(record))

    def evaluation_samples(
        self, records: Sequence[Record], metric: Metric, options: dict[str, Any]
    ) -> list[EvalSample]:
        """One sample per sentence (the records hold one expression each)."""
        samples = []
        for index, record in enumerate(records):
            expression = record.expressions[0]
            truth = MaskTruth(expression.masks, record.height, record.width, text=expression.text)
            request = {"task": self.name, "text": expression.text}
            samples.append(EvalSample(str(index), record.image_path, record.image_id, request, truth))
        return samples


REFERRING = ReferringHandler()
