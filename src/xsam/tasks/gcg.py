"""Grounded conversation generation (GCG, GranD-f): a caption whose phrases are segmented.

At inference the model *generates* a caption whose grounded phrases are wrapped in ``<p>…</p>``,
followed by one ``<SEG>``; every generated phrase becomes one class (in caption order). The prompt
is therefore the question alone (:func:`build_prompt`). Training (and the teacher-forced fixture)
adds the answer built from a caption and its phrase character spans (:func:`build_answer`).

Answer format (official rule, reproduced by the ``gcgseg`` fixture): every phrase span becomes
``<p>phrase</p>`` followed by **one extra space**, the caption is otherwise unchanged, the result is
stripped, and ``" " + answer template`` is appended. So ``"A cup sits on a saucer."`` with spans
``[(0, 5), (14, 22)]`` gives ``"<p>A cup</p>  sits on <p>a saucer</p> . And <SEG>."`` (two spaces
after a phrase followed by a space, ``" ."`` before the period).

Each generated phrase gets the mask of the query that scores it highest
(:func:`grounded_conversation`); the training target has one mask per phrase.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..processing import Frame, postprocess_masks
from ..tokens import SEG
from .base import Draft, DraftOptions, EvalSample, Metric, Prompt, TargetDraft, TaskHandler, TaskRequest
from .conversation import Turn, generated_phrases, readable_text
from .mask_classification import NO_LABEL, class_probabilities
from .prediction import Prediction
from .records import Record, union_masks
from .templates import TemplateChoice, TemplateList, place_image, wrap_phrase

QUESTIONS = TemplateList(
    "gcg questions",
    (
        "Could you please give me a brief description of the image? Please respond with interleaved "
        "segmentation masks for the corresponding parts of the answer.",
        "Can you provide a brief description of the this image? Please output interleaved "
        "segmentation masks for the corresponding phrases.",
    ),
    official_size=6,
)

# Appended to the tagged caption with one space; one <SEG> for all phrases.
ANSWERS = TemplateList(
    "gcg answers",
    (
        f"{SEG}.",
        f"And {SEG}.",
        f"The segmentation mask is {SEG}.",
        f"And the segmentation mask is {SEG}.",
    ),
    official_size=4,
)


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
    index into :data:`ANSWERS` or a custom answer with one ``<SEG>``)."""
    if not phrase_spans:
        raise ValueError("a GCG answer needs at least one grounded phrase")
    return f"{tag_caption(caption, phrase_spans).strip()} {ANSWERS.render(answer_template)}"


def build_prompt(*, question_template: TemplateChoice = 0) -> list[Turn]:
    """The inference prompt: the question only; the caption, phrases and ``<SEG>`` are generated.

    ``question_template`` is an index into :data:`QUESTIONS` or a custom
    question (no placeholders; literal braces doubled, see :mod:`xsam.tasks.templates`).
    """
    return [Turn(place_image(QUESTIONS.render(question_template)))]


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
        question_template=QUESTIONS.draw(rng),
        answer_template=ANSWERS.draw(rng),
    )


@dataclass
class GroundedResult:
    """Grounded conversation, ``P`` phrases: ``masks`` ``(P, H, W)`` bool, ``scores`` ``(P,)`` float32
    and ``queries`` ``(P,)`` int64 of the query chosen per phrase, ``label_map`` ``(H, W)`` int64 with
    phrase index + 1 per pixel (later phrases overwrite earlier ones) and ``NO_LABEL`` elsewhere."""

    masks: torch.Tensor
    scores: torch.Tensor
    queries: torch.Tensor
    label_map: torch.Tensor


def grounded_conversation(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, frame: Frame, *, mask_threshold: float = 0.5
) -> GroundedResult:
    """Grounded conversation generation (official ``gcgseg_postprocess_fn``).

    For each phrase ``c`` (class column, in caption order) the query maximising its probability gives
    the mask ``sigmoid > mask_threshold``; the label map paints ``c + 1`` phrase after phrase, so later
    phrases overwrite earlier ones, and ``NO_LABEL`` (255) stays where no mask is (phrase ids reach 255
    only past 254 phrases, as in the official map). Only the chosen queries are upsampled.
    """
    probabilities = class_probabilities(class_logits, mask_logits)
    top_scores, top_queries = probabilities.max(dim=0)
    unique, inverse = torch.unique(top_queries, return_inverse=True)
    logits = postprocess_masks(mask_logits[unique], frame)
    masks = (logits.sigmoid() > mask_threshold)[inverse]
    label_map = torch.full(frame.original_size, NO_LABEL, dtype=torch.int64, device=masks.device)
    for phrase, mask in enumerate(masks):
        label_map[mask] = phrase + 1
    return GroundedResult(masks=masks, scores=top_scores, queries=top_queries, label_map=label_map)


def text_prediction(task: str, text: str, frame: Frame) -> Prediction:
    """A generated answer without masks: its phrases, readable text and raw text."""
    empty = torch.zeros(0, *frame.original_size, dtype=torch.bool)
    return Prediction(
        task, empty, [], [], phrases=generated_phrases(text), text=readable_text(text), raw_text=text
    )


class GCGHandler(TaskHandler):
    """Grounded conversation generation: no prompt in, a caption with a mask per phrase out."""

    name = "gcg"
    official_name = "gcgseg"
    generates = True
    mask_threshold = 0.5
    metrics = (Metric.GCG,)
    questions = (QUESTIONS,)
    templates = (QUESTIONS, ANSWERS)

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> TaskRequest:
        return TaskRequest(self.name, build_prompt(), [])

    def interpret(
        self, request: TaskRequest, text: str, logits: tuple[torch.Tensor, torch.Tensor] | None, frame: Frame
    ) -> Prediction:
        """Phrases and caption from the text; with a ``<SEG>`` and phrases, a mask per phrase."""
        prediction = text_prediction(self.name, text, frame)
        if logits is None or logits[0].shape[-1] < 2:  # no <SEG>, or no <p>…</p> to ground
            return prediction
        grounded = grounded_conversation(*logits, frame, mask_threshold=self.mask_threshold)
        phrases = prediction.phrases
        count = len(grounded.masks)
        prediction.labels = phrases if len(phrases) == count else [f"phrase {i}" for i in range(count)]
        prediction.masks = grounded.masks.cpu()
        prediction.scores = [float(s) for s in grounded.scores]
        prediction.segmentation = grounded.label_map.cpu()
        return prediction

    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        """Training and (teacher-forced) validation use the tagged caption as the answer."""
        if record.caption is None or not record.phrases:
            raise ValueError(f"GCG record {record.image_id!r} needs a caption and grounded phrases")
        phrases = sorted(record.phrases, key=lambda phrase: phrase.start)
        spans = [(phrase.start, phrase.end) for phrase in phrases]
        if train:
            turns = sample_prompt(record.caption, spans, rng)
        else:
            turns = build_training_prompt(record.caption, spans)
        masks = [union_masks(phrase.masks, record.height, record.width) for phrase in phrases]
        names = [record.caption[start:end] for start, end in spans]
        return Draft(turns, [TargetDraft(list(range(len(masks))), masks)], class_names=names)

    def evaluation_samples(
        self, records: Sequence[Record], metric: Metric, options: dict[str, Any]
    ) -> list[EvalSample]:
        """One generated caption per image; the truth is the record (its GT files hold the rest)."""
        return [
            EvalSample(str(record.image_id), record.image_path, record.image_id, {"task": self.name}, record)
            for record in records
        ]


GCG = GCGHandler()
