"""The row type of the task table and the vocabulary every task module shares.

A task is one :class:`TaskHandler` subclass in one module of this package, and one row of
:data:`xsam.tasks.registry.TASKS`. The handler owns the task's whole vertical:

* **inference** - :meth:`TaskHandler.request` checks a :class:`Prompt` and builds the conversation
  (:class:`TaskRequest`); :meth:`TaskHandler.postprocess` (teacher-forced tasks) or
  :meth:`TaskHandler.interpret` (generating tasks) turns the model's output into a
  :class:`~xsam.tasks.prediction.Prediction`;
* **training** - :meth:`TaskHandler.draft` turns a :class:`~xsam.tasks.records.Record` into prompt
  turns and target masks at the image's resolution (:class:`Draft`), which :mod:`xsam.data.samples`
  encodes and moves onto the SAM canvas;
* **evaluation** - :meth:`TaskHandler.evaluation_samples` turns a benchmark's records into prompts and
  their ground truth (:class:`EvalSample`), scored by the evaluator of a :class:`Metric` family.

The predictor, sample building, ``xsam eval`` and ``xsam score`` reach a task only through this
interface.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..processing import Frame
from .conversation import Turn
from .prediction import Prediction
from .records import Mask, Record, union_masks

if TYPE_CHECKING:
    from .generic import CategorySpec
    from .templates import TemplateList


class Metric(str, Enum):
    """How a benchmark's predictions are scored: one evaluator (``xsam eval``) and one file scorer
    (``xsam score``) per family. The generic families share their names with
    :class:`~xsam.tasks.generic.SegmentationKind`, the post-processing they score."""

    PANOPTIC = "panoptic"
    SEMANTIC = "semantic"
    INSTANCE = "instance"
    MASK_IOU = "mask_iou"
    GCG = "gcg"
    VGD = "vgd"


@dataclass(frozen=True)
class Prompt:
    """What a caller asks about the current image: the keyword arguments of
    :meth:`XSamPredictor.predict <xsam.inference.predictor.XSamPredictor.predict>` besides the task.

    Attributes:
        text: the expression (referring), query (reasoning) or message (chat).
        categories: generic classes: ``"ins: a, b; sem: c"``, a list of names (instance) or a
            :class:`~xsam.tasks.generic.CategorySpec`.
        points: ``(N, 2)`` x, y pixels; each point is one region.
        boxes: ``(N, 4)`` x0, y0, x1, y1 pixels; each box is one region.
        scribbles: polylines, each ``(K, 2)`` x, y pixels.
        masks: ``(H, W)`` or ``(N, H, W)`` bool arrays, one region each.
        is_sentence: reasoning: long-question (True) or short-question (False) template.
        closed_set: generic: segment with the stage-1 closed-set segmentor instead of the LLM.
        history: chat: earlier ``(question, answer)`` turns, instead of the remembered conversation.
    """

    text: str | None = None
    categories: str | Sequence[str] | CategorySpec | None = None
    points: ArrayLike | None = None
    boxes: ArrayLike | None = None
    scribbles: Sequence[ArrayLike] | None = None
    masks: ArrayLike | None = None
    is_sentence: bool | None = None
    closed_set: bool = False
    history: Sequence[tuple[str, str]] | None = None

    def given(self) -> list[str]:
        """Names of the fields that are set (not None, not False)."""
        return [
            f.name
            for f in fields(self)
            if getattr(self, f.name) is not None and getattr(self, f.name) is not False
        ]


VISUAL_PROMPT_FIELDS = frozenset({"points", "boxes", "scribbles", "masks"})

_UNEXPECTED = {
    "text": "takes no text",
    "categories": "takes no categories",
    "visual": "takes no visual prompts (points/boxes/scribbles/masks)",
}


@dataclass
class TaskRequest:
    """A checked prompt, ready for the model.

    Attributes:
        task: the task's name.
        turns: the conversation (the last turn's answer is the teacher-forced template, or None where
            the answer is generated).
        labels: one name per condition class, in class order (a category, the expression, ``region k``).
        region_masks: ``(R, H, W)`` bool visual prompts in the image frame, one per ``<region>``.
    """

    task: str
    turns: list[Turn]
    labels: list[str]
    region_masks: torch.Tensor | None = None


@dataclass
class TargetDraft:
    """One future decoder target: class labels and ``(H, W)`` bool masks at the image's resolution."""

    labels: list[int]
    masks: list[np.ndarray]


@dataclass
class Draft:
    """A training (or teacher-forced validation) sample before encoding.

    ``targets[i]`` belongs to ``turns[i]`` when the task decodes per ``<SEG>``; ``region_prompts`` are
    ``(H, W)`` bool visual prompts in ``<region>`` order; ``class_names`` name the condition classes;
    ``ignore`` marks pixels left out of the loss.
    """

    turns: list[Turn]
    targets: list[TargetDraft] = field(default_factory=list)
    region_prompts: list[np.ndarray] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    ignore: np.ndarray | None = None


@dataclass
class DraftOptions:
    """The task-side knobs of sample building (defaults: the release's stage 3).

    Attributes:
        num_class: generic/open-vocab training cap on listed categories (official ``num_class``; the
            default 10000 means "all negatives" in practice).
        visual_prompt_type: fix the VGD / interactive prompt kind (``"point"``, ``"scribble"``, ``"box"``
            or ``"mask"``). None: training draws one non-empty kind per instance, evaluation takes the
            first non-empty kind of :data:`~xsam.tasks.visual_grounding.VISUAL_PROMPT_KINDS`.
        vgd_negative_probability: chance that a VGD training sample lists negative categories.
        vgd_max_negatives: at most this many negatives (official ``num_class=5`` of the VGD dataset).
        closed_set: stage 1: generic targets are labelled with the category's position in the
            dataset's class list (id order), the closed-set head's classes.
    """

    num_class: int = 10000
    visual_prompt_type: str | None = None
    vgd_negative_probability: float = 0.5
    vgd_max_negatives: int = 5
    closed_set: bool = False


@dataclass
class MaskTruth:
    """Ground truth of a single-mask sample (the :attr:`Metric.MASK_IOU` family): the union of
    ``masks`` in an ``(height, width)`` image, ``ignore`` pixels left out of both masks."""

    masks: list[Mask]
    height: int
    width: int
    ignore: Mask | None = None
    text: str | None = None

    def target(self) -> np.ndarray:
        """``(H, W)`` bool union of the masks."""
        return union_masks(self.masks, self.height, self.width)


@dataclass
class EvalSample:
    """One prompt of a benchmark.

    Attributes:
        key: unique within the benchmark (names saved predictions).
        image_path: the image the prompt is about (consecutive samples often share it).
        image_id: the dataset's image id.
        request: keyword arguments of ``XSamPredictor.predict`` (the task included).
        truth: what the benchmark's metric family scores the prediction against.
    """

    key: str
    image_path: Path
    image_id: Any
    request: dict[str, Any]
    truth: Any


class TaskHandler:
    """One task: its facts (class attributes) and the methods of its vertical (see the module docs).

    Facts:
        name: the task's name (the :class:`~xsam.tasks.task.Task` value).
        official_name: the official code's name (``genseg``, ``refseg``, ...), accepted as an alias.
        accepts: the :class:`Prompt` fields the task takes.
        decode_per_seg: one decoder sample per ``<SEG>`` whose class list is the batch's phrases
            (referring, reasoning); otherwise one decoder sample per conversation whose classes are
            its conditions.
        generates: inference generates the answer (GCG, chat); every other task is run teacher-forced,
            with the answer template part of the input.
        segments: the task produces masks (all but chat).
        keeps_history: the predictor remembers the conversation per image (chat).
        region_prompts: the prompt holds ``<region>`` placeholders fed by visual prompts.
        score_threshold: query-score threshold in evaluation (None where masks are not scored).
        demo_score_threshold: the same in the demo / by default in the predictor.
        mask_threshold: sigmoid threshold binarising the selected masks (None where the
            post-processing has no such parameter).
        closed_set_capable: stage-1 closed-set training takes its records (generic, open-vocab).
        metrics: the metric families its benchmarks are scored with.
        questions: the question lists inference and evaluation prompt with (index 0 of each).
        answers: the answer list of teacher-forced prompts (None where the answer is generated).
        templates: every template list the task's module defines.
    """

    name: ClassVar[str]
    official_name: ClassVar[str]
    accepts: ClassVar[frozenset[str]] = frozenset()
    decode_per_seg: ClassVar[bool] = False
    generates: ClassVar[bool] = False
    segments: ClassVar[bool] = True
    keeps_history: ClassVar[bool] = False
    region_prompts: ClassVar[bool] = False
    score_threshold: ClassVar[float | None] = None
    demo_score_threshold: ClassVar[float | None] = None
    mask_threshold: ClassVar[float | None] = None
    closed_set_capable: ClassVar[bool] = False
    metrics: ClassVar[tuple[Metric, ...]] = ()
    questions: ClassVar[tuple[TemplateList, ...]] = ()
    answers: ClassVar[TemplateList | None] = None
    templates: ClassVar[tuple[TemplateList, ...]] = ()

    # ---------------------------------------------------------------------------------- inference
    def request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn] = ()
    ) -> TaskRequest:
        """Check ``prompt`` against what the task accepts and build its conversation.

        Args:
            prompt: the caller's arguments.
            image_size: ``(H, W)`` of the current image (visual prompts are rasterised at it).
            history: earlier answered turns about this image (chat).

        Raises:
            ValueError: an argument the task does not take, or a missing or malformed one (named).
        """
        for name in prompt.given():
            if name not in self.accepts:
                raise ValueError(self._unexpected(name))
        return self.build_request(prompt, image_size, history)

    def _unexpected(self, name: str) -> str:
        if name == "is_sentence":
            return f"is_sentence= applies to reasoning only, not to '{self.name}'"
        if name == "closed_set":
            return f"closed_set=True applies to generic segmentation only, not to '{self.name}'"
        if name == "history":
            return f"history= applies to chat only, not to '{self.name}'"
        kind = "visual" if name in VISUAL_PROMPT_FIELDS else name
        return f"task '{self.name}' {_UNEXPECTED[kind]}"

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> TaskRequest:
        """The task's own part of :meth:`request` (the prompt holds only accepted fields)."""
        raise NotImplementedError

    def postprocess(
        self,
        request: TaskRequest,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        frame: Frame,
        threshold: float | None,
    ) -> Prediction:
        """Final-stage decoder logits of the request's decoder sample -> the prediction.

        Args:
            class_logits: ``(Q, C + 1)`` float32, the request's ``C`` classes then background.
            mask_logits: ``(Q, m, m)`` float32 on the SAM canvas grid.
            frame: the image's sizes on the canvas.
            threshold: the caller's threshold (None: the task's default).
        """
        raise NotImplementedError(f"task '{self.name}' generates its answer; use interpret()")

    def closed_set_logits(self, request: TaskRequest, class_logits: torch.Tensor) -> torch.Tensor:
        """Closed-set head logits ``(..., K + 1)`` restricted to the request's classes (generic)."""
        raise NotImplementedError(f"task '{self.name}' has no closed-set mode")

    def interpret(
        self,
        request: TaskRequest,
        text: str,
        logits: tuple[torch.Tensor, torch.Tensor] | None,
        frame: Frame,
    ) -> Prediction:
        """A generated answer -> the prediction (generating tasks).

        Args:
            text: the generated text up to the end token, X-SAM's tags kept.
            logits: final-stage ``(class_logits, mask_logits)`` of the generated ``<SEG>``, if any.
            frame: the image's sizes on the canvas.
        """
        raise NotImplementedError(f"task '{self.name}' is answered teacher-forced; use postprocess()")

    # ----------------------------------------------------------------------------------- training
    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        """One record as prompt turns and target masks at the image's resolution.

        ``train`` draws templates, categories and prompts with ``rng``; otherwise the deterministic
        evaluation form (first templates, all categories in id order, first prompt kind).
        """
        raise NotImplementedError

    # --------------------------------------------------------------------------------- evaluation
    def evaluation_samples(
        self, records: Sequence[Record], metric: Metric, options: dict[str, Any]
    ) -> list[EvalSample]:
        """A benchmark's records as prompts and ground truth for ``metric``'s evaluator.

        ``options`` are the benchmark's reader settings (``prompt_kind``, ``closed_set``, ...).
        """
        raise NotImplementedError(f"task '{self.name}' has no benchmark")


def check_threshold(threshold: float | None) -> None:
    """A score / mask threshold must be None (the task's default) or a number in ``[0, 1]``."""
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")


def check_max_new_tokens(max_new_tokens: int) -> None:
    """A generation budget must be a positive whole number."""
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, numbers.Integral)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive whole number, got {max_new_tokens!r}")
