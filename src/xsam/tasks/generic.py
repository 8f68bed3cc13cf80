"""Generic segmentation (COCO panoptic / instance / semantic); open-vocabulary segmentation too.

The prompt lists the categories to segment as condition phrases, ``<p>a</p>, <p>b</p>, …``; the
class index of a category is its position in that list. One ``<SEG>`` in the answer drives the
decoder. Users name categories with the demo syntax ``"ins: person, car; sem: sky, road"``
(:func:`parse_category_prompt`), which also decides the post-processing (panoptic, instance or
semantic, :mod:`~xsam.tasks.mask_classification`).

Training lists the record's categories as the official code does (:func:`sample_categories`): one
target with every non-crowd instance, thing instances kept apart and the stuff segments of one class
merged; evaluation lists every category of the dataset in id order.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np
import torch

from ..processing import Frame
from ..tokens import SEG, literal
from . import mask_classification
from .base import Draft, DraftOptions, EvalSample, Metric, Prompt, TargetDraft, TaskHandler, TaskRequest
from .conversation import Turn
from .prediction import Prediction
from .records import Record, Segment
from .templates import TemplateChoice, TemplateList, place_image, wrap_phrase

QUESTIONS = TemplateList(
    "generic questions",
    (
        "Can you segment the image based on the following categories: {categories}? "
        "Please output the segmentation masks.",
        "Can you generate segmentation masks for this image based on the specified categories: "
        "{categories}? Please generate the segmentation masks.",
        # Not in the official configuration we have; the text the train_genseg fixture realises.
        "Could you output segmentation masks for this image that highlight the following categories: "
        "{categories}? Please output the segmentation masks.",
    ),
    official_size=6,
)

ANSWERS = TemplateList(
    "generic answers",
    (
        f"{SEG}.",
        f"It is {SEG}.",
        f"Sure, {SEG}.",
        f"Sure, it is {SEG}.",
        f"Sure, the segmentation result is {SEG}.",
    ),
    official_size=5,
)

# Removed in this order, anywhere in the name, before "-" becomes a space (COCO "wall-other-merged"
# -> "wall", "door-stuff" -> "door").
_REMOVED_PARTS = ("-merged", "-other", "-stuff")
_SECTION_KEYS = ("ins", "sem")  # thing classes, stuff classes
_SYNTAX_HINT = "expected e.g. 'ins: person, car; sem: sky, road'"


class SegmentationKind(str, Enum):
    """Which post-processing a category prompt asks for (and which :class:`Metric` scores it)."""

    PANOPTIC = "panoptic"
    INSTANCE = "instance"
    SEMANTIC = "semantic"


@dataclass(frozen=True)
class CategorySpec:
    """The categories of one generic-segmentation request, in prompt order.

    ``is_thing[i]`` says whether ``names[i]`` is a thing (instance) class or a stuff class; stuff
    segments of one class are merged by panoptic post-processing.
    """

    names: tuple[str, ...]
    is_thing: tuple[bool, ...]
    kind: SegmentationKind

    @classmethod
    def from_names(cls, *, things: Sequence[str] = (), stuff: Sequence[str] = ()) -> CategorySpec:
        """Things first, then stuff. Names are kept verbatim, so they may contain commas
        (ADE20K's ``"road, route"``). Both given -> panoptic, only things -> instance, only stuff ->
        semantic.
        """
        things, stuff = tuple(things), tuple(stuff)
        names = things + stuff
        if not names:
            raise ValueError(f"no category names given; {_SYNTAX_HINT}")
        if any(not name.strip() for name in names):
            raise ValueError("category names must not be empty")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"category names given more than once: {duplicates}")
        if things and stuff:
            kind = SegmentationKind.PANOPTIC
        else:
            kind = SegmentationKind.INSTANCE if things else SegmentationKind.SEMANTIC
        return cls(names, (True,) * len(things) + (False,) * len(stuff), kind)

    def shuffled(self, rng: random.Random) -> CategorySpec:
        """The same categories in a random order (the official demo shuffles before prompting)."""
        order = list(range(len(self.names)))
        rng.shuffle(order)
        return replace(
            self,
            names=tuple(self.names[i] for i in order),
            is_thing=tuple(self.is_thing[i] for i in order),
        )


def clean_category_name(name: str) -> str:
    """Official category-name cleaning: drop ``-merged``, ``-other``, ``-stuff`` (in that order,
    anywhere in the name), turn the remaining ``-`` into spaces, lower-case. Whitespace is kept.
    """
    for part in _REMOVED_PARTS:
        name = name.replace(part, "")
    return name.replace("-", " ").lower()


def format_categories(names: Sequence[str]) -> str:
    """``["wall-other-merged", "Person"]`` -> ``"<p>wall</p>, <p>person</p>"`` (names cleaned)."""
    return ", ".join(wrap_phrase(clean_category_name(name)) for name in names)


def _split_names(text: str) -> list[str]:
    """Comma-separated names; a name holding a comma is written in double quotes (CSV rules)."""
    fields = next(csv.reader([text], skipinitialspace=True), [])
    return [name.strip() for name in fields if name.strip()]


def parse_category_prompt(prompt: str) -> CategorySpec:
    """Parse the demo syntax ``"ins: a, b; sem: c"`` into a :class:`CategorySpec`.

    Sections are separated by ``;`` and start with ``ins:`` (thing classes) or ``sem:`` (stuff
    classes), each at most once, in any order; names are separated by commas. A name that contains
    a comma (ADE20K-150 has ``"road, route"``) is double-quoted: ``'sem: "road, route", sky'``, or
    build the spec with :meth:`CategorySpec.from_names` from lists. Raises ValueError on a section
    without a known prefix, a repeated or empty section, or no names at all.
    """
    sections: dict[str, list[str]] = {}
    for section in prompt.split(";"):
        if not section.strip():
            continue
        key, colon, body = section.partition(":")
        key = key.strip().lower()
        if not colon or key not in _SECTION_KEYS:
            raise ValueError(
                f"category prompt section {section.strip()!r} must start with 'ins:' or 'sem:'; "
                f"{_SYNTAX_HINT}"
            )
        if key in sections:
            raise ValueError(f"'{key}:' appears more than once in {prompt!r}")
        names = _split_names(body)
        if not names:
            raise ValueError(f"'{key}:' lists no category names in {prompt!r}")
        sections[key] = names
    if not sections:
        raise ValueError(f"empty category prompt; {_SYNTAX_HINT}")
    return CategorySpec.from_names(things=sections.get("ins", ()), stuff=sections.get("sem", ()))


def category_spec(categories: str | Sequence[str] | CategorySpec | None) -> CategorySpec:
    """The categories of a request: the demo syntax, a list of names (instance) or a spec."""
    if categories is None:
        raise ValueError("generic segmentation needs categories= ('ins: a, b; sem: c' or a list of names)")
    if isinstance(categories, CategorySpec):
        return categories
    if isinstance(categories, str):
        return parse_category_prompt(categories)
    return CategorySpec.from_names(things=list(categories))


# ------------------------------------------------------------------------------------------ prompts
def build_prompt(
    categories: Sequence[str],
    *,
    question_template: TemplateChoice = 0,
    answer_template: TemplateChoice | None = 0,
) -> list[Turn]:
    """One turn asking to segment ``categories`` (raw names, cleaned here), in the given order.

    ``question_template`` indexes :data:`QUESTIONS` or is a custom template with one ``{categories}``
    placeholder (e.g. ``"Find {categories} in the picture."``). ``answer_template`` indexes
    :data:`ANSWERS` or is a custom answer with one ``<SEG>`` (teacher-forced evaluation and training put
    the answer in the input); None leaves the answer to generation. Custom templates are checked as
    described in :mod:`xsam.tasks.templates`.
    """
    if isinstance(categories, str):
        raise TypeError("categories must be a sequence of names, not one string")
    if not categories:
        raise ValueError("generic segmentation needs at least one category")
    question = QUESTIONS.render(question_template, categories=format_categories(categories))
    answer = None if answer_template is None else ANSWERS.render(answer_template)
    return [Turn(place_image(question), answer)]


def sample_prompt(categories: Sequence[str], rng: random.Random) -> list[Turn]:
    """Training prompt: question and answer templates drawn with ``rng``."""
    return build_prompt(categories, question_template=QUESTIONS.draw(rng), answer_template=ANSWERS.draw(rng))


def sample_categories(
    names: Sequence[str], positives: Sequence[str], rng: random.Random, *, num_class: int = 10000
) -> list[str]:
    """Official training choice of the categories a generic prompt lists.

    With probability 0.5 all ``names`` in random order; otherwise the positives plus
    ``min(#negatives, randint(0, num_class - #positives))`` random negatives, shuffled. The official
    code draws this once per record at dataset load; here it is drawn per call with ``rng``.
    """
    if rng.random() < 0.5:
        chosen = list(names)
    else:
        present = set(positives)
        negatives = [name for name in names if name not in present]
        count = min(len(negatives), rng.randint(0, max(num_class - len(present), 0)))
        chosen = [name for name in names if name in present] + rng.sample(negatives, count)
    rng.shuffle(chosen)
    return chosen


# ---------------------------------------------------------------------------------------- the task
@dataclass
class GenericRequest(TaskRequest):
    """A generic request also carries its categories (their kind picks the post-processing)."""

    categories: CategorySpec | None = None


class GenericHandler(TaskHandler):
    """Generic segmentation: categories in, panoptic / instance / semantic masks out."""

    name = "generic"
    official_name = "genseg"
    accepts = frozenset({"categories", "closed_set"})
    closed_set_capable = True
    score_threshold = 0.0
    demo_score_threshold = 0.5
    metrics = (Metric.PANOPTIC, Metric.SEMANTIC, Metric.INSTANCE)
    questions = (QUESTIONS,)
    answers = ANSWERS
    templates = (QUESTIONS, ANSWERS)

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> GenericRequest:
        spec = category_spec(prompt.categories)
        turns = build_prompt([literal(name) for name in spec.names])
        return GenericRequest(self.name, turns, list(spec.names), categories=spec)

    def closed_set_logits(self, request: TaskRequest, class_logits: torch.Tensor) -> torch.Tensor:
        """Closed-set head logits ``(..., K + 1)`` restricted to the request's classes.

        The head's classes are fixed: the request must name exactly them, in the head's order, or
        (instance segmentation) its first ones, the things, as COCO panoptic orders them.
        """
        num_classes = class_logits.shape[-1] - 1
        given = len(request.labels)
        instance = request.categories.kind is SegmentationKind.INSTANCE
        if given != num_classes and not (instance and given < num_classes):
            raise ValueError(
                f"the closed-set head has {num_classes} classes but {given} categories were given; "
                "list the head's classes in its order (instance segmentation: its first classes, the "
                "things, as COCO panoptic orders them)"
            )
        if given == num_classes:
            return class_logits
        return torch.cat([class_logits[..., :given], class_logits[..., -1:]], dim=-1)

    def postprocess(
        self,
        request: TaskRequest,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        frame: Frame,
        threshold: float | None,
    ) -> Prediction:
        categories = request.categories
        threshold = self.demo_score_threshold if threshold is None else threshold
        if categories.kind is SegmentationKind.PANOPTIC:
            return self._panoptic(categories, class_logits, mask_logits, frame, threshold)
        if categories.kind is SegmentationKind.INSTANCE:
            return self._instance(categories, class_logits, mask_logits, frame, threshold)
        return self._semantic(categories, class_logits, mask_logits, frame)

    def _panoptic(
        self,
        categories: CategorySpec,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        frame: Frame,
        threshold: float,
    ) -> Prediction:
        names = list(categories.names)
        result = mask_classification.panoptic(
            class_logits, mask_logits, frame, is_thing=list(categories.is_thing), threshold=threshold
        )
        first = {}
        for segment in result.segments:  # stuff segments of one class share an id: keep one entry
            first.setdefault(segment.id, segment)
        ids = sorted(first)
        masks = torch.stack([result.segmentation == i for i in ids]) if ids else _no_masks(frame)
        return Prediction(
            self.name,
            masks.cpu(),
            [names[first[i].label_id] for i in ids],
            [float(first[i].score) for i in ids],
            segmentation=result.segmentation.cpu(),
            segments=[dict(first[i].as_official(), label=names[first[i].label_id]) for i in ids],
        )

    def _instance(
        self,
        categories: CategorySpec,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        frame: Frame,
        threshold: float,
    ) -> Prediction:
        result = mask_classification.instance(class_logits, mask_logits, frame, threshold=threshold)
        keep = result.masks.flatten(1).any(1)
        return Prediction(
            self.name,
            result.masks[keep].cpu(),
            [categories.names[int(i)] for i in result.labels[keep]],
            [float(s) for s in result.scores[keep]],
        )

    def _semantic(
        self, categories: CategorySpec, class_logits: torch.Tensor, mask_logits: torch.Tensor, frame: Frame
    ) -> Prediction:
        label_map = mask_classification.semantic(class_logits, mask_logits, frame)
        present = [int(i) for i in label_map.unique()]
        masks = torch.stack([label_map == i for i in present]) if present else _no_masks(frame)
        # semantic segmentation has no per-segment score; 1.0 marks "assigned"
        return Prediction(
            self.name,
            masks.cpu(),
            [categories.names[i] for i in present],
            [1.0] * len(present),
            segmentation=label_map.cpu(),
        )

    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        segments = [segment for segment in record.segments if not segment.iscrowd]
        if options.closed_set and not record.categories:
            raise ValueError(
                f"closed-set training needs the dataset's class list; record {record.image_id!r} has none"
            )
        names = _category_names(record, segments)
        if train and not options.closed_set:
            positives = list(dict.fromkeys(segment.category for segment in segments))
            names = sample_categories(names, positives, rng, num_class=options.num_class)
            turns = sample_prompt(names, rng)
        else:
            turns = build_prompt(names)
        return Draft(turns, [_generic_target(segments, names)], class_names=names)

    def evaluation_samples(
        self, records: Sequence[Record], metric: Metric, options: dict[str, Any]
    ) -> list[EvalSample]:
        """One sample per image listing every category of the dataset in id order; the truth is the
        record."""
        if metric not in self.metrics:
            raise ValueError(f"task '{self.name}' is not scored by {metric.value}")
        first = records[0]
        names = tuple(name for name, _ in first.categories)
        is_thing = tuple(thing for _, thing in first.categories)
        categories = CategorySpec(names, is_thing, SegmentationKind(metric.value))
        request: dict[str, Any] = {
            "task": self.name,
            "categories": categories,
            "threshold": self.score_threshold,
        }
        if options.get("closed_set"):
            request["closed_set"] = True
        return [
            EvalSample(str(record.image_id), record.image_path, record.image_id, dict(request), record)
            for record in records
        ]


class OpenVocabHandler(GenericHandler):
    """Open-vocabulary segmentation: generic segmentation over categories unseen in training."""

    name = "open_vocab"
    official_name = "ovseg"
    accepts = frozenset({"categories"})
    templates = ()


def _no_masks(frame: Frame) -> torch.Tensor:
    return torch.zeros(0, *frame.original_size, dtype=torch.bool)


def _category_names(record: Record, segments: Sequence[Segment]) -> list[str]:
    """The dataset's class list in id order; without one, the segments' classes in first-seen order."""
    if record.categories:
        names = [name for name, _ in record.categories]
        unknown = sorted({s.category for s in segments} - set(names))
        if unknown:
            raise ValueError(f"record {record.image_id!r}: segment classes {unknown} not in its categories")
        return names
    return list(dict.fromkeys(segment.category for segment in segments))


def _generic_target(segments: Sequence[Segment], names: Sequence[str]) -> TargetDraft:
    """Thing instances apart, the stuff segments of one class merged; label = position in ``names``."""
    index = {name: i for i, name in enumerate(names)}
    target = TargetDraft([], [])
    stuff: dict[str, np.ndarray] = {}
    for segment in segments:
        mask = segment.mask.decode()
        if segment.is_thing:
            target.labels.append(index[segment.category])
            target.masks.append(mask)
        elif segment.category in stuff:
            stuff[segment.category] |= mask
        else:
            stuff[segment.category] = mask.copy()
    for name, mask in stuff.items():
        target.labels.append(index[name])
        target.masks.append(mask)
    return target


GENERIC = GenericHandler()
OPEN_VOCAB = OpenVocabHandler()
