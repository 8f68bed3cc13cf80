"""Turn one dataset :class:`~xsam.tasks.records.Record` into model inputs and segmentation targets.

:func:`build_sample` is the single entry point. The record's task (its row of the task table) drafts
the conversation turns, the ground-truth masks grouped into decoder targets and the visual-prompt
masks, all at the original image resolution (:meth:`~xsam.tasks.base.TaskHandler.draft`). This
module then encodes the text (:func:`~xsam.tasks.conversation.encode_conversation`), brings every
mask onto the SAM canvas with the same transform as the image, and packs a :class:`Sample`.

Coordinate frames: target, ignore and region masks are ``(N, S', S')`` bool on the padded SAM canvas
(``S' = config.segmentation_encoder.image_size``), the scaled image in the top-left corner, exactly as
:func:`~xsam.processing.preprocess_masks` places them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from ..config import PIL_BILINEAR, XSamConfig
from ..processing import (
    STORED_FRAME,
    Frame,
    SamInput,
    SegmentationTarget,
    image_to_uint8_tensor,
    load_image,
    pad_bottom_right,
    preprocess_masks,
    preprocess_sam,
    preprocess_siglip,
    rescale_and_normalise,
    resize_image,
    sam_scaled_size,
)
from ..tasks.base import Draft, DraftOptions, TaskHandler
from ..tasks.conversation import EncodedConversation, encode_conversation
from ..tasks.records import Record
from ..tasks.registry import task_handler


class SampleTooLongError(ValueError):
    """The text of a sample does not fit ``max_length`` without cutting a ``<SEG>`` or a phrase.

    A dataset wrapper may catch it to skip the record; the message names the record.
    """


@dataclass
class SampleOptions(DraftOptions):
    """Knobs of :func:`build_sample` (defaults: the S3 release): the task-side ones of
    :class:`~xsam.tasks.base.DraftOptions` plus the image and text side.

    Attributes:
        scale_range: stage-1 scale jitter of the SAM view (``(0.1, 2.0)`` in S1, see
            :func:`scale_jitter`); None (S2/S3, evaluation) keeps the plain resize.
        max_length: text-token cap; None uses :func:`text_max_length` of the config.
    """

    scale_range: tuple[float, float] | None = None
    max_length: int | None = None


@dataclass
class Sample:
    """One record as model inputs and targets (unbatched).

    Attributes:
        task: the record's task (its name in the task table).
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
        decode_per_seg: referring/reasoning layout (see :class:`~xsam.tasks.base.TaskHandler`).
        meta: ``image_id``, ``image_path``, ``original_size`` and ``scaled_size`` ((H, W) / (h, w),
            None without image), ``class_names`` (the listed classes in condition order).
    """

    task: str
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


def text_max_length(config: XSamConfig) -> int:
    """Text-token budget left beside the image tokens in the LLM context (official formula).

    ``int(context - (siglip_size / patch) ** 2 - sam_tokens)``; the SigLIP term is the *unfloored*
    ratio squared as in the official config, which gives 2319 for the release (4096 − 752.3 − 1024).
    """
    context = int(config.language_model.hf_config.get("max_position_embeddings", 4096))
    siglip = config.image_encoder
    return int(context - (siglip.image_size / siglip.patch_size) ** 2 - config.num_seg_tokens)


# ------------------------------------------------------------------------------------ text length
def _encode_fitting(
    draft: Draft,
    handler: TaskHandler,
    tokenizer: PreTrainedTokenizerBase,
    config: XSamConfig,
    record: Record,
    max_length: int,
) -> EncodedConversation:
    """Encode the turns within ``max_length`` tokens (counting ``<image>`` as one, as officially).

    Referring/reasoning drop whole trailing turns (with their targets) first; chat is cut anywhere;
    any other overflow, or a cut through a ``<SEG>`` or a ``<p>…</p>`` span, raises
    :class:`SampleTooLongError`.
    """
    encoded = encode_conversation(tokenizer, draft.turns, tokens=config.tokens)
    while len(encoded.input_ids) > max_length and handler.decode_per_seg and len(draft.turns) > 1:
        draft.turns.pop()
        draft.targets.pop()
        draft.class_names.pop()
        encoded = encode_conversation(tokenizer, draft.turns, tokens=config.tokens)
    if len(encoded.input_ids) <= max_length:
        return encoded
    cut = slice(max_length, None)
    if bool((encoded.seg_ids[cut] >= 0).any()) or bool((encoded.cond_ids[cut] >= 0).any()):
        raise SampleTooLongError(
            f"{handler.name} record {record.image_id!r} ({record.source or 'no source'}) has "
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
    """Stage-1 augmentation of the SAM view: random scale, centre crop, no flip (as Mask2Former's LSJ).

    With ``s ~ U(scale_range)``, the image is resized to fit a square of side ``target_size * s``
    keeping its aspect ratio, rounding as the official stage-1 processor does: the side of the square
    half up first, then each image side half up from the original size (so a 400 x 600 image at
    ``s = 0.5`` becomes 341 x 512, not a rounded half of the plain 683 x 1024 view). Each side longer
    than ``target_size`` is then cropped to ``target_size`` around the centre (offset
    ``(side - target_size) // 2``). Padding to the canvas is left to the caller.

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
    scale = rng.uniform(*scale_range)
    height, width = sam_scaled_size((image.height, image.width), max(1, int(target_size * scale + 0.5)))
    top, left = max(height - target_size, 0) // 2, max(width - target_size, 0) // 2
    box = (left, top, left + min(width, target_size), top + min(height, target_size))
    resized = resize_image(image, (width, height), resample).crop(box)
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
    frame = Frame((image.height, image.width), (jittered.height, jittered.width), sam.image_size)
    sam_input = SamInput(canvas, frame)
    return sam_input, mask_canvas.bool()


# -------------------------------------------------------------------------------------- assembly
def _check_structure(
    encoded: EncodedConversation, draft: Draft, handler: TaskHandler, record: Record
) -> None:
    """The tokens must hold one condition per listed class and the ``<SEG>`` count the layout needs
    (a class name or expression containing ``<p>`` or ``<SEG>`` would silently shift every label)."""
    if not handler.segments:
        return
    conditions = int(encoded.cond_ids.max().item()) + 1 if encoded.cond_ids.numel() else 0
    segs = int((encoded.seg_ids >= 0).sum().item())
    expected_segs = len(draft.targets) if handler.decode_per_seg else 1
    if conditions != len(draft.class_names) or segs != expected_segs:
        raise ValueError(
            f"{handler.name} record {record.image_id!r}: the prompt encodes {conditions} phrases and {segs} "
            f"<SEG> tokens, expected {len(draft.class_names)} and {expected_segs}"
        )


def _load_record_image(record: Record) -> Image.Image | None:
    if record.image_path is None:
        return None
    # the annotations are in the stored frame, so the EXIF orientation is not applied
    image = load_image(record.image_path, policy=STORED_FRAME)
    size_known = record.height > 0 and record.width > 0  # LLaVA's JSON states no sizes (0 x 0)
    if size_known and (image.height, image.width) != (record.height, record.width):
        raise ValueError(
            f"record {record.image_id!r}: image {record.image_path} is {image.height}x{image.width}, "
            f"the record says {record.height}x{record.width}"
        )
    return image


def _split_canvas(draft: Draft, canvas: torch.Tensor) -> tuple[list[SegmentationTarget], torch.Tensor | None]:
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
        tokenizer: from :func:`xsam.tokens.load_tokenizer` (with ``<SEG>``, ``<p>``, ``</p>``).
        rng: every random choice (templates, categories, prompts, jitter) is drawn from it.
        train: random templates and category/prompt sampling; False gives the deterministic
            evaluation form (first templates, all categories in id order, fixed prompt kind).
        pad_to_square: SigLIP square padding; None means "not in training, yes in evaluation"
            (stage 3 resizes without padding; evaluation and the demo pad).
        options: see :class:`SampleOptions`.

    Raises:
        SampleTooLongError: the text cannot be fitted to the token budget without losing a ``<SEG>``.
        ValueError: the record lacks what its task needs, or its image disagrees with its size.
    """
    options = options or SampleOptions()
    handler = task_handler(record.task)
    if options.closed_set and not handler.closed_set_capable:
        raise ValueError(
            f"closed-set training takes generic segmentation records; {record.image_id!r} is {handler.name}"
        )
    draft = handler.draft(record, rng, train=train, options=options)
    max_length = options.max_length if options.max_length is not None else text_max_length(config)
    encoded = _encode_fitting(draft, handler, tokenizer, config, record, max_length)
    _check_structure(encoded, draft, handler, record)
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
        raise ValueError(f"{handler.name} record {record.image_id!r} has no image")
    return Sample(
        task=handler.name,
        source=record.source,
        input_ids=encoded.input_ids,
        labels=encoded.labels,
        cond_ids=encoded.cond_ids,
        seg_ids=encoded.seg_ids,
        pixel_values=pixel_values,
        sam_pixel_values=sam_pixel_values,
        region_masks=region_masks,
        targets=targets,
        decode_per_seg=handler.decode_per_seg,
        meta=meta,
    )
