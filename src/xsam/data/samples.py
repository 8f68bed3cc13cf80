"""Turn one dataset :class:`~xsam.data.records.Record` into model inputs and segmentation targets.

:func:`build_sample` is the single entry point; it dispatches on the record's task to a small builder
that returns the conversation turns, the ground-truth masks (grouped into decoder targets) and the
visual-prompt masks, all still at the original image resolution. The shared tail then encodes the text
(:func:`~xsam.tasks.conversation.encode_conversation`), brings every mask onto the SAM canvas with the
same transform as the image, and packs a :class:`Sample`.

Per task (REFERENCE §2):

* generic / open-vocabulary: the prompt lists categories (training: :func:`sample_categories`, eval: all
  categories in id order); one target with every non-crowd instance, thing instances kept apart and
  the stuff segments of one class merged; label = position of the category in the prompt.
* referring / reasoning: one turn (and one ``<SEG>``) per expression, ``decode_per_seg``; one target per
  ``<SEG>`` holding the union of that expression's masks, labelled with the expression's index *in the
  sample*. :func:`~xsam.data.collate.collate` shifts these to batch-wide indices.
* GCG: the caption with ``<p>…</p>`` phrases and one ``<SEG>``; one target with one mask per phrase.
* VGD: one ``<p><region></p>`` per category, prompted by one instance; target = all its instances.
* interactive: one region prompt, target = that instance.
* chat: LLaVA turns, language loss only, no targets.

Coordinate frames: target, ignore and region masks are ``(N, S', S')`` bool on the padded SAM canvas
(``S' = config.segmentation_encoder.image_size``), the scaled image in the top-left corner, exactly as
:func:`~xsam.data.transforms.preprocess_masks` places them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from ..config import PIL_BILINEAR, XSamConfig
from ..losses.criterion import SegmentationTarget
from ..tasks import Task, chat, gcg, generic, interactive, reasoning, referring, visual_grounding
from ..tasks.conversation import EncodedConversation, Turn, encode_conversation
from ..tasks.templates import IMAGE, place_image
from .records import Record, Segment, union_masks
from .transforms import (
    SamInput,
    image_to_uint8_tensor,
    load_image,
    pad_bottom_right,
    preprocess_masks,
    preprocess_sam,
    preprocess_siglip,
    rescale_and_normalise,
    sam_scaled_size,
)

VISUAL_PROMPT_TYPES = ("point", "scribble", "box", "mask")
"""Visual-prompt kinds of :attr:`Segment.visual_prompts`, in the order the eval fallback tries them."""


class SampleTooLongError(ValueError):
    """The text of a sample does not fit ``max_length`` without cutting a ``<SEG>`` or a phrase.

    A dataset wrapper may catch it to skip the record; the message names the record.
    """


@dataclass
class SampleOptions:
    """Knobs of :func:`build_sample` beyond the train/eval switch (defaults: the S3 release).

    Attributes:
        num_class: generic/open-vocab training cap on listed categories (official ``num_class``; the
            default 10000 means "all negatives" in practice, see :func:`sample_categories`).
        visual_prompt_type: fix the VGD / interactive prompt kind (``"point"``, ``"scribble"``, ``"box"``
            or ``"mask"``). None: training draws one non-empty kind per instance, evaluation takes the
            first non-empty kind of :data:`VISUAL_PROMPT_TYPES`.
        vgd_negative_probability: chance that a VGD training sample lists negative categories.
        vgd_max_negatives: at most this many negatives (official ``num_class=5`` of the VGD dataset).
        scale_range: stage-1 scale jitter of the SAM view (``(0.1, 2.0)`` in S1, see
            :func:`scale_jitter`); None (S2/S3, evaluation) keeps the plain resize.
        closed_set: stage 1: generic targets are labelled with the category's position in the
            dataset's class list (id order), the closed-set head's classes, instead of its position in
            a sampled, shuffled prompt.
        max_length: text-token cap; None uses :func:`text_max_length` of the config.
    """

    num_class: int = 10000
    visual_prompt_type: str | None = None
    vgd_negative_probability: float = 0.5
    vgd_max_negatives: int = 5
    scale_range: tuple[float, float] | None = None
    closed_set: bool = False
    max_length: int | None = None


@dataclass
class Sample:
    """One record as model inputs and targets (unbatched).

    Attributes:
        task: the record's task.
        source: the dataset name (``Record.source``), used for grouping batches.
        input_ids, labels, cond_ids, seg_ids: ``(T,)`` int64; ``input_ids`` holds the ``<image>`` and
            ``<region>`` sentinels, ``labels`` is -100 outside answers, ``cond_ids`` numbers the
            ``<p>…</p>`` spans and ``seg_ids`` the ``<SEG>`` tokens (-1 elsewhere).
        pixel_values: ``(3, S, S)`` float32 SigLIP view, or None for a text-only sample.
        sam_pixel_values: ``(3, S', S')`` float32 SAM view, or None for a text-only sample.
        region_masks: ``(R, S', S')`` bool visual prompts, one per ``<region>`` in prompt order, or None.
        targets: one :class:`SegmentationTarget` per decoder sample (per ``<SEG>`` when
            ``decode_per_seg``), masks ``(N, S', S')`` bool on the SAM canvas, labels ``(N,)`` int64
            indices into this sample's conditions.
        decode_per_seg: referring/reasoning layout (see :class:`~xsam.tasks.task.TaskSpec`).
        meta: ``image_id``, ``image_path``, ``original_size`` and ``scaled_size`` ((H, W) / (h, w),
            None without image), ``class_names`` (the listed classes in condition order).
    """

    task: Task
    source: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    cond_ids: torch.Tensor
    seg_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    sam_pixel_values: torch.Tensor | None
    region_masks: torch.Tensor | None
    targets: list[SegmentationTarget]
    decode_per_seg: bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_conditions(self) -> int:
        """Number of ``<p>…</p>`` spans, i.e. of class embeddings this sample contributes."""
        return int(self.cond_ids.max().item()) + 1 if self.cond_ids.numel() else 0


# ------------------------------------------------------------------------------------------ drafts
@dataclass
class _TargetDraft:
    """One future :class:`SegmentationTarget`: labels and ``(H, W)`` masks at the original size."""

    labels: list[int]
    masks: list[np.ndarray]


@dataclass
class _Draft:
    """What a task builder produces; ``targets[i]`` belongs to ``turns[i]`` when ``decode_per_seg``."""

    turns: list[Turn]
    targets: list[_TargetDraft] = field(default_factory=list)
    region_prompts: list[np.ndarray] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    ignore: np.ndarray | None = None


_Builder = Callable[[Record, random.Random, bool, SampleOptions], _Draft]


def text_max_length(config: XSamConfig) -> int:
    """Text-token budget left beside the image tokens in the LLM context (official formula).

    ``int(context - (siglip_size / patch) ** 2 - sam_tokens)``; the SigLIP term is the *unfloored*
    ratio squared as in the official config, which gives 2319 for the release (4096 − 752.3 − 1024).
    """
    context = int(config.language_model.hf_config.get("max_position_embeddings", 4096))
    siglip = config.image_encoder
    return int(context - (siglip.image_size / siglip.patch_size) ** 2 - config.num_seg_tokens)


# ----------------------------------------------------------------------------------------- helpers
def _kept_segments(record: Record) -> list[Segment]:
    """Segments that become targets or prompts: crowd regions are dropped, as officially."""
    return [segment for segment in record.segments if not segment.iscrowd]


def _category_names(record: Record, segments: Sequence[Segment]) -> list[str]:
    """The dataset's class list in id order; without one, the segments' classes in first-seen order."""
    if record.categories:
        names = [name for name, _ in record.categories]
        unknown = sorted({s.category for s in segments} - set(names))
        if unknown:
            raise ValueError(f"record {record.image_id!r}: segment classes {unknown} not in its categories")
        return names
    return list(dict.fromkeys(segment.category for segment in segments))


def sample_categories(
    names: Sequence[str], positives: Sequence[str], rng: random.Random, *, num_class: int = 10000
) -> list[str]:
    """Official training choice of the categories a generic prompt lists (REFERENCE §2.1).

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


def _check_closed_set(record: Record, task: Task) -> None:
    """A closed-set (stage-1) sample needs a generic record whose dataset lists its classes."""
    if task not in (Task.GENERIC, Task.OPEN_VOCAB):
        raise ValueError(
            f"closed-set training takes generic segmentation records; {record.image_id!r} is {task.value}"
        )
    if not record.categories:
        raise ValueError(
            f"closed-set training needs the dataset's class list; record {record.image_id!r} has none"
        )


# ---------------------------------------------------------------------------------- task builders
def _generic_draft(record: Record, rng: random.Random, train: bool, options: SampleOptions) -> _Draft:
    segments = _kept_segments(record)
    names = _category_names(record, segments)
    if train and not options.closed_set:
        positives = list(dict.fromkeys(segment.category for segment in segments))
        names = sample_categories(names, positives, rng, num_class=options.num_class)
        turns = generic.sample_prompt(names, rng)
    else:
        turns = generic.build_prompt(names)
    index = {name: i for i, name in enumerate(names)}
    target = _TargetDraft([], [])
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
    return _Draft(turns, [target], class_names=names)


def _ignore_mask(record: Record) -> np.ndarray | None:
    return None if record.ignore_mask is None else record.ignore_mask.decode()


def _expression_targets(record: Record) -> list[_TargetDraft]:
    return [
        _TargetDraft([i], [union_masks(expression.masks, record.height, record.width)])
        for i, expression in enumerate(record.expressions)
    ]


def _referring_draft(record: Record, rng: random.Random, train: bool, options: SampleOptions) -> _Draft:
    texts = [expression.text for expression in record.expressions]
    if not texts:
        raise ValueError(f"referring record {record.image_id!r} has no expressions")
    turns = referring.sample_prompt(texts, rng) if train else referring.build_prompt(texts)
    return _Draft(turns, _expression_targets(record), class_names=texts, ignore=_ignore_mask(record))


def _reasoning_draft(record: Record, rng: random.Random, train: bool, options: SampleOptions) -> _Draft:
    if not record.expressions:
        raise ValueError(f"reasoning record {record.image_id!r} has no queries")
    turns: list[Turn] = []
    # Queries of one image may differ in is_sentence / explanation, so each turn is built on its own.
    for expression in record.expressions:
        if train:
            (turn,) = reasoning.sample_prompt(
                expression.text, rng, is_sentence=expression.is_sentence, explanation=expression.explanation
            )
        else:
            (turn,) = reasoning.build_prompt(expression.text, is_sentence=expression.is_sentence)
        if turns:
            turn.question = turn.question.replace(IMAGE, "").strip()
        turns.append(turn)
    names = [expression.text for expression in record.expressions]
    return _Draft(turns, _expression_targets(record), class_names=names, ignore=_ignore_mask(record))


def _gcg_draft(record: Record, rng: random.Random, train: bool, options: SampleOptions) -> _Draft:
    """Training and (teacher-forced) validation use the tagged caption as the answer; generation-based
    evaluation builds its prompt with :func:`xsam.tasks.gcg.build_prompt` instead."""
    if record.caption is None or not record.phrases:
        raise ValueError(f"GCG record {record.image_id!r} needs a caption and grounded phrases")
    phrases = sorted(record.phrases, key=lambda phrase: phrase.start)
    spans = [(phrase.start, phrase.end) for phrase in phrases]
    if train:
        turns = gcg.sample_prompt(record.caption, spans, rng)
    else:
        turns = gcg.build_training_prompt(record.caption, spans)
    masks = [union_masks(phrase.masks, record.height, record.width) for phrase in phrases]
    names = [record.caption[start:end] for start, end in spans]
    return _Draft(turns, [_TargetDraft(list(range(len(masks))), masks)], class_names=names)


def _visual_prompt(
    segment: Segment, rng: random.Random, train: bool, options: SampleOptions
) -> np.ndarray | None:
    """One decoded, non-empty visual prompt of ``segment``, or None when it has none of the wanted kind."""
    if options.visual_prompt_type is not None:
        if options.visual_prompt_type not in VISUAL_PROMPT_TYPES:
            raise ValueError(
                f"visual_prompt_type {options.visual_prompt_type!r} is not one of {VISUAL_PROMPT_TYPES}"
            )
        kinds = [options.visual_prompt_type]
    else:
        kinds = [kind for kind in VISUAL_PROMPT_TYPES if kind in segment.visual_prompts]
    decoded = [segment.visual_prompts[kind].decode() for kind in kinds if kind in segment.visual_prompts]
    decoded = [prompt for prompt in decoded if prompt.any()]
    if not decoded:
        return None
    return rng.choice(decoded) if train else decoded[0]


def _promptable(
    segments: Sequence[Segment], rng: random.Random, train: bool, options: SampleOptions
) -> dict[str, list[tuple[Segment, np.ndarray]]]:
    """Category -> instances with a usable visual prompt (category order: first seen)."""
    found: dict[str, list[tuple[Segment, np.ndarray]]] = {}
    for segment in segments:
        prompt = _visual_prompt(segment, rng, train, options)
        if prompt is not None:
            found.setdefault(segment.category, []).append((segment, prompt))
    return found


def _vgd_negatives(
    record: Record, present: set[str], rng: random.Random, options: SampleOptions
) -> list[str]:
    """Training negatives: with ``vgd_negative_probability``, 1..``vgd_max_negatives`` absent classes."""
    candidates = [name for name, _ in record.categories if name not in present]
    if not candidates or options.vgd_max_negatives < 1 or rng.random() >= options.vgd_negative_probability:
        return []
    return rng.sample(candidates, rng.randint(1, min(options.vgd_max_negatives, len(candidates))))


def _vgd_draft(record: Record, rng: random.Random, train: bool, options: SampleOptions) -> _Draft:
    """Each listed category is prompted by one of its own instances in this image.

    Negatives (training) get an empty region mask, which the naive sampler turns into the zero
    vector: the official fallback when no other image of the batch has an unused instance.
    TODO(cross-image prompts): the release prompts every listed category (negatives included) with a
    random instance from *anywhere in the per-GPU batch* (REFERENCE §1.8). That needs the region
    feature of one sample to be sampled from another sample's feature map, which ``XSamModel`` does
    not support yet (``region_masks`` are read against the sample's own image), so neither this
    builder nor ``collate`` can do it with masks alone.
    """
    segments = _kept_segments(record)
    promptable = _promptable(segments, rng, train, options)
    if not promptable:
        raise ValueError(
            f"VGD record {record.image_id!r} has no instance with a non-empty visual prompt "
            "(synthesise Segment.visual_prompts in the reader)"
        )
    names = list(promptable)
    if train:
        names += _vgd_negatives(record, set(names), rng, options)
        rng.shuffle(names)
    elif record.categories:  # evaluation lists the categories in dataset id order
        order = {name: i for i, (name, _) in enumerate(record.categories)}
        names.sort(key=lambda name: order.get(name, len(order)))
    empty = np.zeros((record.height, record.width), dtype=bool)
    prompts = [rng.choice(promptable[name])[1] if name in promptable else empty for name in names]
    index = {name: i for i, name in enumerate(names)}
    target = _TargetDraft([], [])
    for segment in segments:
        if segment.category in promptable:
            target.labels.append(index[segment.category])
            target.masks.append(segment.mask.decode())
    if train:
        turns = visual_grounding.sample_prompt(len(names), rng)
    else:
        turns = visual_grounding.build_prompt(len(names))
    return _Draft(turns, [target], region_prompts=prompts, class_names=names)


def _interactive_draft(record: Record, rng: random.Random, train: bool, options: SampleOptions) -> _Draft:
    """The prompted instance: a random promptable one in training, the first in evaluation."""
    candidates = [
        (segment, prompt)
        for segment in _kept_segments(record)
        if (prompt := _visual_prompt(segment, rng, train, options)) is not None
    ]
    if not candidates:
        raise ValueError(f"interactive record {record.image_id!r} has no instance with a visual prompt")
    segment, prompt = rng.choice(candidates) if train else candidates[0]
    turns = interactive.sample_prompt(rng) if train else interactive.build_prompt()
    target = _TargetDraft([0], [segment.mask.decode()])
    return _Draft(turns, [target], region_prompts=[prompt], class_names=[segment.category])


def _chat_draft(record: Record, rng: random.Random, train: bool, options: SampleOptions) -> _Draft:
    """LLaVA turns; a trailing unanswered question is dropped in training (as officially)."""
    turns = chat.from_llava(record.conversations)
    if train and turns and turns[-1].answer is None:
        turns = turns[:-1]
    if not turns:
        raise ValueError(f"chat record {record.image_id!r} has no answered turn")
    has_placeholder = any(IMAGE in turn.question for turn in turns)
    if record.image_path is None and has_placeholder:
        raise ValueError(f"chat record {record.image_id!r} has an <image> placeholder but no image")
    if record.image_path is not None and not has_placeholder:
        turns[0].question = place_image(turns[0].question)
    return _Draft(turns)


_BUILDERS: dict[Task, _Builder] = {
    Task.GENERIC: _generic_draft,
    Task.OPEN_VOCAB: _generic_draft,
    Task.REFERRING: _referring_draft,
    Task.REASONING: _reasoning_draft,
    Task.GCG: _gcg_draft,
    Task.VGD: _vgd_draft,
    Task.INTERACTIVE: _interactive_draft,
    Task.CHAT: _chat_draft,
}


# ------------------------------------------------------------------------------------ text length
def _encode_fitting(
    draft: _Draft, tokenizer: PreTrainedTokenizerBase, config: XSamConfig, record: Record, max_length: int
) -> EncodedConversation:
    """Encode the turns within ``max_length`` tokens (counting ``<image>`` as one, as officially).

    Referring/reasoning drop whole trailing turns (with their targets) first; chat is cut anywhere;
    any other overflow, or a cut through a ``<SEG>`` or a ``<p>…</p>`` span, raises
    :class:`SampleTooLongError`.
    """
    task = Task(record.task)
    encoded = encode_conversation(tokenizer, draft.turns, tokens=config.tokens)
    while len(encoded.input_ids) > max_length and task.spec.decode_per_seg and len(draft.turns) > 1:
        draft.turns.pop()
        draft.targets.pop()
        draft.class_names.pop()
        encoded = encode_conversation(tokenizer, draft.turns, tokens=config.tokens)
    if len(encoded.input_ids) <= max_length:
        return encoded
    cut = slice(max_length, None)
    if bool((encoded.seg_ids[cut] >= 0).any()) or bool((encoded.cond_ids[cut] >= 0).any()):
        raise SampleTooLongError(
            f"{task.value} record {record.image_id!r} ({record.source or 'no source'}) has "
            f"{len(encoded.input_ids)} text tokens, more "
            f"than max_length={max_length}, and truncation would cut a <SEG> or a <p>…</p> phrase"
        )
    keep = slice(0, max_length)
    return EncodedConversation(
        encoded.input_ids[keep], encoded.labels[keep], encoded.cond_ids[keep], encoded.seg_ids[keep]
    )


# ------------------------------------------------------------------------------------- SAM canvas
def scale_jitter(
    image: Image.Image,
    masks: np.ndarray,
    rng: random.Random,
    *,
    target_size: int,
    scale_range: tuple[float, float] = (0.1, 2.0),
    resample: int = PIL_BILINEAR,
) -> tuple[Image.Image, np.ndarray]:
    """Stage-1 augmentation of the SAM view (REFERENCE §3.1): random scale, centre crop, no flip.

    The image is resized to ``s`` times its longest-side-``target_size`` size, ``s ~ U(scale_range)``,
    keeping the aspect ratio; each side longer than ``target_size`` is then cropped to ``target_size``
    around the centre (offset ``(side - target_size) // 2``). Padding to the canvas is left to the caller.

    Args:
        image: RGB image ``W x H``.
        masks: ``(N, H, W)`` bool masks in the image frame (N may be 0); resized with NEAREST.
        rng: draws ``s``.
        target_size: the SAM canvas side ``S'``.
        scale_range: bounds of the uniform scale.
        resample: PIL filter for the image.

    Returns:
        The image ``w x h`` with ``h, w <= target_size`` and the masks ``(N, h, w)`` bool, aligned with it.
    """
    if masks.ndim != 3 or masks.shape[1:] != (image.height, image.width):
        raise ValueError(f"masks must be (N, {image.height}, {image.width}), got {masks.shape}")
    base_h, base_w = sam_scaled_size((image.height, image.width), target_size)
    scale = rng.uniform(*scale_range)
    height, width = max(1, round(base_h * scale)), max(1, round(base_w * scale))
    top, left = max(height - target_size, 0) // 2, max(width - target_size, 0) // 2
    box = (left, top, left + min(width, target_size), top + min(height, target_size))
    resized = image.resize((width, height), resample=Image.Resampling(resample)).crop(box)
    jittered = [
        np.array(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST).crop(box))
        for mask in masks.astype(np.uint8)
    ]
    out_masks = np.stack(jittered) if jittered else np.zeros((0, box[3] - top, box[2] - left), bool)
    return resized, out_masks.astype(bool)


def _sam_view(
    image: Image.Image, masks: np.ndarray, config: XSamConfig, rng: random.Random, options: SampleOptions
) -> tuple[SamInput, torch.Tensor]:
    """SAM input plus ``masks`` ``(N, H, W)`` on its canvas ``(N, S', S')`` bool."""
    sam = config.segmentation_encoder
    if options.scale_range is None:
        return preprocess_sam(image, sam), preprocess_masks(masks, sam).bool()
    jittered, jittered_masks = scale_jitter(
        image, masks, rng, target_size=sam.image_size, scale_range=options.scale_range, resample=sam.resample
    )
    pixels = rescale_and_normalise(image_to_uint8_tensor(jittered), sam.image_mean, sam.image_std)
    canvas = pad_bottom_right(pixels, sam.image_size, 0)
    mask_canvas = pad_bottom_right(torch.from_numpy(jittered_masks.astype(np.uint8)), sam.image_size, 0)
    sam_input = SamInput(canvas, (image.height, image.width), (jittered.height, jittered.width))
    return sam_input, mask_canvas.bool()


# -------------------------------------------------------------------------------------- assembly
def _check_structure(encoded: EncodedConversation, draft: _Draft, task: Task, record: Record) -> None:
    """The tokens must hold one condition per listed class and the ``<SEG>`` count the layout needs
    (a class name or expression containing ``<p>`` or ``<SEG>`` would silently shift every label)."""
    if task is Task.CHAT:
        return
    conditions = int(encoded.cond_ids.max().item()) + 1 if encoded.cond_ids.numel() else 0
    segs = int((encoded.seg_ids >= 0).sum().item())
    expected_segs = len(draft.targets) if task.spec.decode_per_seg else 1
    if conditions != len(draft.class_names) or segs != expected_segs:
        raise ValueError(
            f"{task.value} record {record.image_id!r}: the prompt encodes {conditions} phrases and {segs} "
            f"<SEG> tokens, expected {len(draft.class_names)} and {expected_segs}"
        )


def _load_record_image(record: Record) -> Image.Image | None:
    if record.image_path is None:
        return None
    image = load_image(record.image_path)
    size_known = record.height > 0 and record.width > 0  # LLaVA's JSON states no sizes (0 x 0)
    if size_known and (image.height, image.width) != (record.height, record.width):
        raise ValueError(
            f"record {record.image_id!r}: image {record.image_path} is {image.height}x{image.width}, "
            f"the record says {record.height}x{record.width}"
        )
    return image


def _split_canvas(
    draft: _Draft, canvas: torch.Tensor
) -> tuple[list[SegmentationTarget], torch.Tensor | None]:
    """Cut the stacked canvas masks back into targets (+ shared ignore mask) and region prompts."""
    targets, offset = [], 0
    ignore = canvas[-1:] if draft.ignore is not None else None
    for target in draft.targets:
        count = len(target.masks)
        masks = canvas[offset : offset + count]
        offset += count
        ignore_masks = None if ignore is None else ignore.expand(count, -1, -1).clone()
        labels = torch.tensor(target.labels, dtype=torch.long)
        targets.append(SegmentationTarget(labels, masks, ignore_masks))
    regions = canvas[offset : offset + len(draft.region_prompts)] if draft.region_prompts else None
    return targets, regions


def build_sample(
    record: Record,
    config: XSamConfig,
    tokenizer: PreTrainedTokenizerBase,
    rng: random.Random,
    *,
    train: bool = True,
    pad_to_square: bool | None = None,
    options: SampleOptions | None = None,
) -> Sample:
    """Build the model inputs and segmentation targets of one record.

    Args:
        record: any task's record; ``record.task`` picks the builder.
        config: image sizes, token ids and the context length come from here.
        tokenizer: from :func:`xsam.tokenizer.load_tokenizer` (with ``<SEG>``, ``<p>``, ``</p>``).
        rng: every random choice (templates, categories, prompts, jitter) is drawn from it.
        train: random templates and category/prompt sampling; False gives the deterministic
            evaluation form (first templates, all categories in id order, fixed prompt kind).
        pad_to_square: SigLIP square padding; None means "not in training, yes in evaluation"
            (S3 resizes without padding, evaluation and the demo pad, REFERENCE §3.1).
        options: see :class:`SampleOptions`.

    Raises:
        SampleTooLongError: the text cannot be fitted to the token budget without losing a ``<SEG>``.
        ValueError: the record lacks what its task needs, or its image disagrees with its size.
    """
    options = options or SampleOptions()
    task = Task(record.task)
    if options.closed_set:
        _check_closed_set(record, task)
    draft = _BUILDERS[task](record, rng, train, options)
    max_length = options.max_length if options.max_length is not None else text_max_length(config)
    encoded = _encode_fitting(draft, tokenizer, config, record, max_length)
    _check_structure(encoded, draft, task, record)
    image = _load_record_image(record)
    meta: dict[str, Any] = {
        "image_id": record.image_id,
        "image_path": record.image_path,
        "original_size": None,
        "scaled_size": None,
        "class_names": list(draft.class_names),
    }
    pixel_values = sam_pixel_values = region_masks = None
    targets: list[SegmentationTarget] = []
    if image is not None:
        square = (not train) if pad_to_square is None else pad_to_square
        pixel_values = preprocess_siglip(image, config.image_encoder, pad_to_square=square)
        stacked = [mask for target in draft.targets for mask in target.masks] + draft.region_prompts
        stacked += [] if draft.ignore is None else [draft.ignore]
        shape = (0, image.height, image.width)
        masks = np.stack(stacked).astype(bool) if stacked else np.zeros(shape, dtype=bool)
        sam_input, canvas = _sam_view(image, masks, config, rng, options)
        sam_pixel_values = sam_input.pixel_values
        targets, region_masks = _split_canvas(draft, canvas)
        meta.update(original_size=sam_input.original_size, scaled_size=sam_input.scaled_size)
    elif draft.targets or draft.region_prompts:
        raise ValueError(f"{task.value} record {record.image_id!r} has no image")
    return Sample(
        task=task,
        source=record.source,
        input_ids=encoded.input_ids,
        labels=encoded.labels,
        cond_ids=encoded.cond_ids,
        seg_ids=encoded.seg_ids,
        pixel_values=pixel_values,
        sam_pixel_values=sam_pixel_values,
        region_masks=region_masks,
        targets=targets,
        decode_per_seg=task.spec.decode_per_seg,
        meta=meta,
    )
