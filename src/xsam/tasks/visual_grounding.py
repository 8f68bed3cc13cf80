"""Visual grounded segmentation (VGD): segment everything like each marked region.

Each visual prompt (point, scribble, box or mask drawn on the image) is one condition phrase
``<p><region></p>``; ``<region>`` is a placeholder whose embedding is the region feature sampled
from the visual prompt (tokenised as a sentinel id, see :mod:`xsam.tasks.conversation`). The
phrases are joined by ``", "`` in prompt order, which is the class order. Post-processing is instance
segmentation over queries x regions (:func:`visual_grounding`).

Training prompts each listed category with one of its own instances in the image (with probability
``vgd_negative_probability`` also a few absent categories, whose region is empty); the target is every
instance of the prompted categories. The release prompts with an instance from anywhere in the
per-GPU batch; that needs one sample's region feature sampled from another sample's feature map,
which :class:`~xsam.modeling.xsam.XSamModel` does not support (``region_masks`` are read against the
sample's own image), so prompts come from the sample's own image here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..processing import Frame, box_mask, point_mask, scribble_mask
from ..tokens import REGION
from . import generic
from .base import Draft, DraftOptions, EvalSample, Metric, Prompt, TargetDraft, TaskHandler, TaskRequest
from .conversation import Turn
from .mask_classification import InstanceResult, instance
from .prediction import Prediction
from .records import Record, Segment
from .templates import TemplateChoice, TemplateList, place_image, wrap_phrase

VISUAL_PROMPT_KINDS = ("point", "scribble", "box", "mask")
"""Visual-prompt kinds of :attr:`Segment.visual_prompts`, in the order evaluation tries them."""

QUESTIONS = TemplateList(
    "visual grounding questions",
    (
        "Can you segment the image based on the following regions: {regions}? "
        "Please output the corresponding segmentation mask.",
        "Can you generate segmentation masks for this image based on the specified regions: "
        "{regions}? Please generate the segmentation masks.",
        # Not in the official configuration we have; realised by the intseg and vgdseg fixtures.
        "Can you provide segmentation masks for this image based on these regions: {regions}? "
        "Please provide the segmentation masks.",
        "Could you create segmentation masks for this image according to the specified regions: "
        "{regions}? Please create the segmentation masks.",
    ),
    official_size=6,
)

ANSWERS = TemplateList("visual grounding answers", generic.ANSWERS.templates, official_size=5)


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

    ``question_template`` indexes :data:`QUESTIONS` or is a custom template with one ``{regions}``
    placeholder (the regions are filled in there; the template itself must not contain ``<region>``);
    ``answer_template`` indexes :data:`ANSWERS` or is a custom answer with one ``<SEG>``, and None
    leaves the answer to generation. See :mod:`xsam.tasks.templates`.
    """
    question = QUESTIONS.render(question_template, regions=format_regions(num_regions))
    answer = None if answer_template is None else ANSWERS.render(answer_template)
    return [Turn(place_image(question), answer)]


def sample_prompt(num_regions: int, rng: random.Random) -> list[Turn]:
    """Training prompt with question and answer templates drawn with ``rng``."""
    return build_prompt(num_regions, question_template=QUESTIONS.draw(rng), answer_template=ANSWERS.draw(rng))


def visual_grounding(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    frame: Frame,
    *,
    threshold: float = 0.0,
    top_k: int | None = None,
    region_labels: Sequence[int] | None = None,
) -> InstanceResult:
    """Visual grounded segmentation (official ``vgdseg_postprocess_fn``): instance segmentation over
    queries x regions, each region prompt being one class (0.0 threshold in evaluation, 0.5 in the
    demo).

    Args:
        region_labels: optional label of each of the ``C`` regions (e.g. its dataset category id, as
            the official ``return_contiguous_labels`` mapping); ``labels`` then hold these instead of
            region indices.
    """
    result = instance(class_logits, mask_logits, frame, threshold=threshold, top_k=top_k)
    if region_labels is None:
        return result
    num_regions = class_logits.shape[1] - 1
    if len(region_labels) != num_regions:
        raise ValueError(f"region_labels has {len(region_labels)} labels for {num_regions} regions")
    mapping = torch.as_tensor(list(region_labels), dtype=torch.int64, device=result.labels.device)
    return replace(result, labels=mapping[result.labels])


# ----------------------------------------------------------------------------------- visual prompts
def region_masks(prompt: Prompt, size_hw: tuple[int, int]) -> torch.Tensor | None:
    """All visual prompts as ``(R, H, W)`` bool masks in the image frame (order: points, boxes,
    scribbles, masks), or None without any. Points are disks of radius 10, scribbles 5 px thick.

    Coordinates are ``(x, y)`` image pixels, rounded half-up. A point must fall on the image; a box
    must overlap it (the part outside is cut off) with ``x0 <= x1`` and ``y0 <= y1``; a scribble needs
    at least one vertex on the image (vertices outside are moved to the nearest border pixel).

    Raises:
        ValueError: malformed or non-finite coordinates, a prompt off the image, masks of another
            size, or a prompt covering no pixel; the message names the prompt.
    """
    regions: list[np.ndarray] = []
    for index, point in enumerate(_coordinates(prompt.points, 2, "points")):
        _require_on_image(point[None], size_hw, f"point {index} (x, y) = {tuple(point.tolist())}")
        regions.append(point_mask(point[None], size_hw))
    for index, box in enumerate(_coordinates(prompt.boxes, 4, "boxes")):
        if not _overlaps(box, size_hw):
            raise ValueError(
                f"box {index} {tuple(box.tolist())} lies outside the {size_hw[1]}x{size_hw[0]} image"
            )
        regions.append(box_mask(box, size_hw))
    for index, line in enumerate(prompt.scribbles or ()):
        vertices = _coordinates(line, 2, f"scribble {index}")
        _require_on_image(vertices, size_hw, f"scribble {index}", any_inside=True)
        regions.append(scribble_mask(vertices, size_hw))
    regions += _mask_regions(prompt.masks, size_hw)
    if not regions:
        return None
    stacked = torch.from_numpy(np.stack(regions))
    empty = [i for i, region in enumerate(stacked) if not region.any()]
    if empty:
        raise ValueError(f"visual prompts {empty} cover no pixel of the image")
    return stacked


def _coordinates(values: ArrayLike | None, width: int, name: str) -> np.ndarray:
    """``values`` as ``(N, width)`` finite float64 (``(0, width)`` for None)."""
    if values is None:
        return np.zeros((0, width))
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, {width} per prompt") from None
    if array.size == 0 or array.size % width:
        raise ValueError(f"{name} must hold {width} numbers per prompt, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite numbers")
    return array.reshape(-1, width)


def _pixels(xy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` x, y -> ``(N, 2)`` int64 column, row, rounded half-up (as the rasterisers do)."""
    return np.floor(xy + 0.5).astype(np.int64)


def _require_on_image(
    xy: np.ndarray, size_hw: tuple[int, int], name: str, *, any_inside: bool = False
) -> None:
    pixels = _pixels(xy)
    inside = (
        (pixels[:, 0] >= 0) & (pixels[:, 0] < size_hw[1]) & (pixels[:, 1] >= 0) & (pixels[:, 1] < size_hw[0])
    )
    if not (inside.any() if any_inside else inside.all()):
        where = "has no vertex on" if any_inside else "lies outside"
        raise ValueError(f"{name} {where} the {size_hw[1]}x{size_hw[0]} image")


def _overlaps(box: np.ndarray, size_hw: tuple[int, int]) -> bool:
    (x0, y0), (x1, y1) = _pixels(box.reshape(2, 2))
    return x1 >= 0 and y1 >= 0 and x0 < size_hw[1] and y0 < size_hw[0]


def _mask_regions(masks: ArrayLike | None, size_hw: tuple[int, int]) -> list[np.ndarray]:
    if masks is None:
        return []
    array = np.asarray(masks)
    array = array[None] if array.ndim == 2 else array
    if array.ndim != 3 or array.shape[1:] != tuple(size_hw):
        raise ValueError(
            f"masks must be (H, W) or (N, H, W) with (H, W) = {tuple(size_hw)}, got {array.shape}"
        )
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"masks must be bool or numeric (nonzero = inside), got dtype {array.dtype}")
    return [mask.astype(bool) for mask in array]


def required_regions(prompt: Prompt, size_hw: tuple[int, int], task: str) -> torch.Tensor:
    """:func:`region_masks`, which must not be None for ``task``."""
    regions = region_masks(prompt, size_hw)
    if regions is None:
        raise ValueError(f"task '{task}' needs a visual prompt: points=, boxes=, scribbles= or masks=")
    return regions


def segment_prompt(segment: Segment, kind: str) -> np.ndarray | None:
    """The decoded, non-empty visual prompt of one kind (None for crowd regions and missing kinds)."""
    if segment.iscrowd or kind not in segment.visual_prompts:
        return None
    prompt = segment.visual_prompts[kind].decode()
    return prompt if prompt.any() else None


def drawn_prompt(
    segment: Segment, rng: random.Random, train: bool, options: DraftOptions
) -> np.ndarray | None:
    """One decoded, non-empty visual prompt of ``segment``: of ``options.visual_prompt_type`` when set,
    else a random kind (training) or the first of :data:`VISUAL_PROMPT_KINDS` it has (evaluation)."""
    if options.visual_prompt_type is not None:
        if options.visual_prompt_type not in VISUAL_PROMPT_KINDS:
            raise ValueError(
                f"visual_prompt_type {options.visual_prompt_type!r} is not one of {VISUAL_PROMPT_KINDS}"
            )
        kinds = [options.visual_prompt_type]
    else:
        kinds = [kind for kind in VISUAL_PROMPT_KINDS if kind in segment.visual_prompts]
    decoded = [segment.visual_prompts[kind].decode() for kind in kinds if kind in segment.visual_prompts]
    decoded = [prompt for prompt in decoded if prompt.any()]
    if not decoded:
        return None
    return rng.choice(decoded) if train else decoded[0]


def _promptable(
    segments: Sequence[Segment], rng: random.Random, train: bool, options: DraftOptions
) -> dict[str, list[tuple[Segment, np.ndarray]]]:
    """Category -> instances with a usable visual prompt (category order: first seen)."""
    found: dict[str, list[tuple[Segment, np.ndarray]]] = {}
    for segment in segments:
        prompt = drawn_prompt(segment, rng, train, options)
        if prompt is not None:
            found.setdefault(segment.category, []).append((segment, prompt))
    return found


def _negatives(record: Record, present: set[str], rng: random.Random, options: DraftOptions) -> list[str]:
    """Training negatives: with ``vgd_negative_probability``, 1..``vgd_max_negatives`` absent classes."""
    candidates = [name for name, _ in record.categories if name not in present]
    if not candidates or options.vgd_max_negatives < 1 or rng.random() >= options.vgd_negative_probability:
        return []
    return rng.sample(candidates, rng.randint(1, min(options.vgd_max_negatives, len(candidates))))


# ---------------------------------------------------------------------------------------- the task
@dataclass
class VGDTruth:
    """Ground truth of a VGD sample: its record and the dataset category id of each region prompt, in
    prompt order (the scored instances come from the benchmark's instances file)."""

    record: Record
    category_ids: list[Any]


class VGDHandler(TaskHandler):
    """Visual grounded segmentation: region prompts in, every instance like each region out."""

    name = "vgd"
    official_name = "vgdseg"
    accepts = frozenset({"points", "boxes", "scribbles", "masks"})
    region_prompts = True
    score_threshold = 0.0
    demo_score_threshold = 0.5
    metrics = (Metric.VGD,)
    questions = (QUESTIONS,)
    answers = ANSWERS
    templates = (QUESTIONS, ANSWERS)

    def build_request(
        self, prompt: Prompt, image_size: tuple[int, int], history: Sequence[Turn]
    ) -> TaskRequest:
        regions = required_regions(prompt, image_size, self.name)
        labels = [f"region {i}" for i in range(len(regions))]
        return TaskRequest(self.name, build_prompt(len(regions)), labels, region_masks=regions)

    def postprocess(
        self,
        request: TaskRequest,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        frame: Frame,
        threshold: float | None,
    ) -> Prediction:
        threshold = self.demo_score_threshold if threshold is None else threshold
        result = visual_grounding(class_logits, mask_logits, frame, threshold=threshold)
        labels = [request.labels[int(i)] for i in result.labels]
        return Prediction(self.name, result.masks.cpu(), labels, [float(s) for s in result.scores])

    def draft(self, record: Record, rng: random.Random, *, train: bool, options: DraftOptions) -> Draft:
        """Each listed category is prompted by one of its own instances; negatives (training) get an
        empty region, which the region sampler turns into the zero vector (the official fallback)."""
        segments = [segment for segment in record.segments if not segment.iscrowd]
        promptable = _promptable(segments, rng, train, options)
        if not promptable:
            raise ValueError(
                f"VGD record {record.image_id!r} has no instance with a non-empty visual prompt "
                "(synthesise Segment.visual_prompts in the reader)"
            )
        names = list(promptable)
        if train:
            names += _negatives(record, set(names), rng, options)
            rng.shuffle(names)
        elif record.categories:  # evaluation lists the categories in dataset id order
            order = {name: i for i, (name, _) in enumerate(record.categories)}
            names.sort(key=lambda name: order.get(name, len(order)))
        empty = np.zeros((record.height, record.width), dtype=bool)
        prompts = [rng.choice(promptable[name])[1] if name in promptable else empty for name in names]
        index = {name: i for i, name in enumerate(names)}
        target = TargetDraft([], [])
        for segment in segments:
            if segment.category in promptable:
                target.labels.append(index[segment.category])
                target.masks.append(segment.mask.decode())
        turns = sample_prompt(len(names), rng) if train else build_prompt(len(names))
        return Draft(turns, [target], region_prompts=prompts, class_names=names)

    def evaluation_samples(
        self, records: Sequence[Record], metric: Metric, options: dict[str, Any]
    ) -> list[EvalSample]:
        """Per image, each category prompted by its first instance with a non-empty prompt of the
        benchmark's ``prompt_kind``, in category-id order; images without one are skipped."""
        kind = options["prompt_kind"]
        samples = []
        for record in records:
            chosen: dict[Any, np.ndarray] = {}
            for segment in record.segments:
                if (
                    segment.category_id not in chosen
                    and (prompt := segment_prompt(segment, kind)) is not None
                ):
                    chosen[segment.category_id] = prompt
            if not chosen:
                continue
            ids = sorted(chosen)
            request = {
                "task": self.name,
                "masks": np.stack([chosen[i] for i in ids]),
                "threshold": self.score_threshold,
            }
            samples.append(
                EvalSample(
                    str(record.image_id), record.image_path, record.image_id, request, VGDTruth(record, ids)
                )
            )
        return samples


VGD = VGDHandler()
