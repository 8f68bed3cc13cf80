"""``XSamPredictor``: encode an image once, then answer many prompts of any task.

Per image it caches the encoder outputs (SigLIP and SAM tokens in LLM space, the pixel decoder's
features) and the language model's KV cache of the shared prefix ``[<s>, <|user|>, image tokens]``
(1,755 positions at official size). A prompt then runs only its own few dozen tokens through the LLM,
the mask decoder and post-processing; the cache is cropped back to the prefix afterwards, so prompts
never see each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.transforms import (
    box_mask,
    load_image,
    point_mask,
    preprocess_masks,
    preprocess_sam,
    preprocess_siglip,
    scribble_mask,
)
from ..modeling.xsam import ImageFeatures, SegmentationOutput, XSamModel
from ..tasks import TASKS, Task, chat, gcg, generic, interactive, postprocess, reasoning, referring
from ..tasks import visual_grounding as vgd
from ..tasks.conversation import Turn, encode_conversation
from ..tasks.generic import CategorySpec, SegmentationKind, parse_category_prompt
from .prediction import Prediction

ImageLike = str | Path | Image.Image | np.ndarray
END_TOKEN = "<|end|>"


@dataclass
class _ImageState:
    image: Image.Image
    scaled_size: tuple[int, int]
    features: ImageFeatures
    cache: Any  # transformers Cache of the prefix, or None
    prefix_ids: torch.Tensor

    @property
    def original_size(self) -> tuple[int, int]:
        return self.image.height, self.image.width


@dataclass
class PredictorStats:
    """How often the expensive steps ran (tests use it to check that encoders run once per image)."""

    image_encodings: int = 0
    prefills: int = 0
    prompts: int = 0


@dataclass
class _Request:
    turns: list[Turn]
    labels: list[str]
    region_masks: torch.Tensor | None = None  # (R, H, W) bool in the image frame
    categories: CategorySpec | None = None


class XSamPredictor:
    """Prompt an :class:`~xsam.modeling.xsam.XSamModel` many times per image.

    Args:
        model: the network (put it on its device and dtype first).
        tokenizer: defaults to the one attached to the model, else the bundled Phi-3 tokenizer.
        use_cache: reuse the LLM's KV cache of the image prefix (exact; disable only to compare).
        seed: seeds the region sampler for prompts larger than its point budget.
    """

    def __init__(
        self, model: XSamModel, tokenizer: Any = None, *, use_cache: bool = True, seed: int = 0
    ) -> None:
        if tokenizer is None:
            tokenizer = model.tokenizer
        if tokenizer is None:
            from ..tokenizer import load_tokenizer

            tokenizer = load_tokenizer(tokens=model.config.tokens)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.use_cache = use_cache
        self.seed = seed
        self.stats = PredictorStats()
        self._state: _ImageState | None = None
        self._chat_history: list[Turn] = []
        self._end_token_id = tokenizer.convert_tokens_to_ids(END_TOKEN)

    # -------------------------------------------------------------------------------------- image
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def set_image(self, image: ImageLike) -> None:
        """Load (path, PIL image or HWC uint8 array; any mode -> RGB), encode and cache one image."""
        picture = load_image(image)
        config = self.model.config
        siglip = preprocess_siglip(picture, config.image_encoder)[None]
        sam = preprocess_sam(picture, config.segmentation_encoder)
        features = self.model.encode_image(
            siglip.to(self.device, self.dtype), sam.pixel_values[None].to(self.device, self.dtype)
        )
        self.stats.image_encodings += 1
        prefix_ids = self._prefix_ids()
        cache = None
        if self.use_cache:
            none = torch.full_like(prefix_ids, -1)
            sequence = self.model.prepare_sequence(
                prefix_ids[None].to(self.device),
                cond_ids=none[None],
                seg_ids=none[None],
                image_features=features,
            )
            cache = self.model.prefill(sequence)
            self.stats.prefills += 1
        self._state = _ImageState(picture, tuple(sam.scaled_size), features, cache, prefix_ids)
        self._chat_history = []

    def reset_image(self) -> None:
        """Forget the current image, its caches and the chat history."""
        self._state = None
        self._chat_history = []

    def reset_chat(self) -> None:
        """Start a new conversation about the current image."""
        self._chat_history = []

    def _prefix_ids(self) -> torch.Tensor:
        """Token ids up to and including ``<image>``: identical for every prompt on an image."""
        ids = encode_conversation(
            self.tokenizer, [Turn("<image>\nx", "x")], tokens=self.model.config.tokens
        ).input_ids
        image_position = int((ids == self.model.config.tokens.image_token_index).nonzero()[0])
        return ids[: image_position + 1]

    def _require_image(self) -> _ImageState:
        if self._state is None:
            raise RuntimeError("no image is set: call set_image(image) before predict()")
        return self._state

    # ------------------------------------------------------------------------------------ predict
    @torch.inference_mode()
    def predict(
        self,
        task: Task | str,
        *,
        text: str | None = None,
        categories: str | Sequence[str] | CategorySpec | None = None,
        points: Any = None,
        boxes: Any = None,
        scribbles: Sequence[Any] | None = None,
        masks: Any = None,
        threshold: float | None = None,
        max_new_tokens: int = 512,
        is_sentence: bool | None = None,
        closed_set: bool = False,
    ) -> Prediction:
        """Answer one prompt about the current image.

        Args:
            task: a :class:`~xsam.tasks.Task` or its value (``"generic"``, ``"referring"``, ...).
            text: the expression (referring), query (reasoning) or message (chat).
            categories: generic / open-vocabulary classes: ``"ins: a, b; sem: c"`` (both -> panoptic,
                only ``ins`` -> instance, only ``sem`` -> semantic), a list of names (instance), or a
                :class:`~xsam.tasks.generic.CategorySpec`.
            points: ``(N, 2)`` x, y pixels; each point is one region (a disk of radius 10).
            boxes: ``(N, 4)`` x0, y0, x1, y1 pixels; each box is one filled region.
            scribbles: polylines, each ``(K, 2)`` x, y pixels, drawn 5 px thick.
            masks: ``(H, W)`` or ``(N, H, W)`` bool arrays, one region each.
            threshold: score threshold (default: the demo setting of the task, 0.5).
            max_new_tokens: generation budget for GCG and chat.
            is_sentence: reasoning only: pick the long-question (True) or short-question (False)
                template, as ReasonSeg's ``is_sentence`` flag does; None guesses from the text.
            closed_set: generic only: segment with the stage-1 closed-set segmentor (mask decoder and
                closed-set head, no LLM) instead of prompting the LLM. Its head has a fixed class
                list, so ``categories`` must name exactly those classes, in the head's order; for
                instance segmentation, its first classes (the things, which COCO panoptic lists
                first; Mask2Former's instance inference likewise keeps the thing classes only).

        Visual prompts feed ``interactive`` (exactly one region) and ``vgd`` (one or more, in the
        order points, boxes, scribbles, masks).
        """
        task = Task(task)
        state = self._require_image()
        if is_sentence is not None and task is not Task.REASONING:
            raise ValueError(f"is_sentence= applies to reasoning only, not to '{task.value}'")
        request = self._request(task, state, text, categories, points, boxes, scribbles, masks, is_sentence)
        spec = TASKS[task]
        self.stats.prompts += 1
        if closed_set:
            segmentation = self._closed_set(task, state, request)
            return self._postprocess(task, state, request, segmentation, threshold)
        if spec.generates:
            return self._generate(task, state, request, max_new_tokens)
        segmentation = self._teacher_forced(task, state, request)
        return self._postprocess(task, state, request, segmentation, threshold)

    def predict_many(
        self,
        images: Iterable[ImageLike],
        requests: Sequence[Mapping[str, Any]],
        *,
        progress: bool = True,
    ) -> list[list[Prediction]]:
        """Run every request (keyword arguments of :meth:`predict`) on every image, encoding each once."""
        from tqdm.auto import tqdm

        images = list(images)
        results = []
        for image in tqdm(images, desc="images", disable=not progress):
            self.set_image(image)
            results.append([self.predict(**request) for request in requests])
        return results

    # ---------------------------------------------------------------------------------- requests
    def _request(
        self,
        task: Task,
        state: _ImageState,
        text: str | None,
        categories: Any,
        points: Any,
        boxes: Any,
        scribbles: Any,
        masks: Any,
        is_sentence: bool | None = None,
    ) -> _Request:
        regions = _region_masks(state.original_size, points, boxes, scribbles, masks)
        spec = TASKS[task]
        if regions is not None and not spec.region_prompts:
            raise ValueError(f"task '{task.value}' takes no visual prompts (points/boxes/scribbles/masks)")
        if categories is not None and task not in (Task.GENERIC, Task.OPEN_VOCAB):
            raise ValueError(f"task '{task.value}' takes no categories")
        if text is not None and task not in (Task.REFERRING, Task.REASONING, Task.CHAT):
            raise ValueError(f"task '{task.value}' takes no text")
        if task in (Task.GENERIC, Task.OPEN_VOCAB):
            spec_ = _category_spec(categories)
            return _Request(generic.build_prompt(spec_.names), list(spec_.names), categories=spec_)
        if task in (Task.REFERRING, Task.REASONING, Task.CHAT) and not (text and text.strip()):
            raise ValueError(f"task '{task.value}' needs text=")
        if task is Task.REFERRING:
            return _Request(referring.build_prompt(text), [text])
        if task is Task.REASONING:
            sentence = _is_sentence(text) if is_sentence is None else is_sentence
            return _Request(reasoning.build_prompt(text, is_sentence=sentence), [text])
        if task is Task.GCG:
            return _Request(gcg.build_prompt(), [])
        if task is Task.CHAT:
            return _Request(chat.build_prompt(text, history=self._chat_history), [])
        if regions is None:
            raise ValueError(
                f"task '{task.value}' needs a visual prompt: points=, boxes=, scribbles= or masks="
            )
        if task is Task.INTERACTIVE:
            if len(regions) != 1:
                raise ValueError(
                    f"interactive segmentation takes exactly one visual prompt, got {len(regions)}"
                )
            return _Request(interactive.build_prompt(), ["region 0"], region_masks=regions)
        return _Request(
            vgd.build_prompt(len(regions)), [f"region {i}" for i in range(len(regions))], region_masks=regions
        )

    def _encode(self, state: _ImageState, request: _Request) -> tuple[dict[str, torch.Tensor], list | None]:
        """Model inputs of a request: the part after the cached prefix (or all of it, uncached)."""
        encoded = encode_conversation(self.tokenizer, request.turns, tokens=self.model.config.tokens)
        start = 0
        if self.use_cache:
            start = len(state.prefix_ids)
            if not torch.equal(encoded.input_ids[:start], state.prefix_ids):
                raise RuntimeError("prompt does not start with the cached image prefix")
        inputs = {
            "input_ids": encoded.input_ids[None, start:],
            "cond_ids": encoded.cond_ids[None, start:],
            "seg_ids": encoded.seg_ids[None, start:],
        }
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        regions = None
        if request.region_masks is not None:
            canvas = preprocess_masks(request.region_masks.numpy(), self.model.config.segmentation_encoder)
            regions = [canvas.bool().to(self.device)]
        return inputs, regions

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    # ------------------------------------------------------------------------------------ running
    def _teacher_forced(self, task: Task, state: _ImageState, request: _Request) -> SegmentationOutput:
        inputs, regions = self._encode(state, request)
        prefix_length = None if state.cache is None else state.cache.get_seq_length()
        try:
            out = self.model(
                **inputs,
                image_features=state.features,
                region_masks=regions,
                decode_per_seg=TASKS[task].decode_per_seg,
                generator=self._generator(),
                past_key_values=state.cache,
            )
        finally:
            if state.cache is not None:
                self.model.truncate_cache(state.cache, prefix_length)
        if out.segmentation is None:
            raise RuntimeError("the prompt produced no <SEG> token")
        return out.segmentation

    def _closed_set(self, task: Task, state: _ImageState, request: _Request) -> SegmentationOutput:
        if task is not Task.GENERIC:
            raise ValueError(f"closed_set=True applies to generic segmentation only, not to '{task.value}'")
        head = self.model.closed_set_head
        if head is None:
            raise ValueError(
                "closed_set=True needs a model with a closed-set head (a stage-1 seg_finetune model)"
            )
        num_classes = head.classifier.out_features - 1
        given = len(request.labels)
        instance = request.categories.kind is SegmentationKind.INSTANCE
        if given != num_classes and not (instance and given < num_classes):
            raise ValueError(
                f"the closed-set head has {num_classes} classes but {given} categories were given; "
                "list the head's classes in its order (instance segmentation: its first classes, the "
                "things, as COCO panoptic orders them)"
            )
        features = state.features
        class_logits, mask_logits = self.model.decode_closed_set(
            features.multi_scale_features, features.mask_features
        )
        if given < num_classes:  # instance: the head's first `given` classes, then "no object"
            class_logits = torch.cat([class_logits[..., :given], class_logits[..., -1:]], dim=-1)
        return SegmentationOutput(class_logits=class_logits, mask_logits=mask_logits)

    def _generate(self, task: Task, state: _ImageState, request: _Request, max_new_tokens: int) -> Prediction:
        inputs, regions = self._encode(state, request)
        prefix_length = None if state.cache is None else state.cache.get_seq_length()
        try:
            result = self.model.generate(
                inputs["input_ids"],
                cond_ids=inputs["cond_ids"],
                image_features=state.features,
                region_masks=regions,
                stop_token_ids=(self._end_token_id,),
                max_new_tokens=max_new_tokens,
                generator=self._generator(),
                past_key_values=state.cache,
            )
        finally:
            if state.cache is not None:
                self.model.truncate_cache(state.cache, prefix_length)
        raw = self.tokenizer.decode(result.token_ids.tolist(), skip_special_tokens=False)
        raw = raw.split(END_TOKEN)[0].strip()
        if task is Task.CHAT:
            self._chat_history.append(Turn(request.turns[-1].question, raw))
        phrases = _phrases(raw)
        empty = torch.zeros(0, *state.original_size, dtype=torch.bool)
        prediction = Prediction(task.value, empty, [], [], phrases=phrases, text=_caption(raw), raw_text=raw)
        if result.segmentation is None or task is Task.CHAT:
            return prediction
        if result.segmentation.class_logits.shape[-1] < 2:  # a <SEG> but no <p>…</p>: nothing to ground
            return prediction
        sizes = self._sizes(state)
        grounded = postprocess.grounded_conversation(
            result.segmentation.class_logits[-1, 0], result.segmentation.mask_logits[-1, 0], **sizes
        )
        labels = (
            phrases
            if len(phrases) == len(grounded.masks)
            else [f"phrase {i}" for i in range(len(grounded.masks))]
        )
        prediction.masks, prediction.labels = grounded.masks.cpu(), labels
        prediction.scores = [float(s) for s in grounded.scores]
        prediction.segmentation = grounded.label_map.cpu()
        prediction.logits = result.segmentation
        return prediction

    def _sizes(self, state: _ImageState) -> dict[str, Any]:
        return {
            "scaled_size": state.scaled_size,
            "original_size": state.original_size,
            "canvas_size": self.model.config.segmentation_encoder.image_size,
        }

    # ---------------------------------------------------------------------------- post-processing
    def _postprocess(
        self,
        task: Task,
        state: _ImageState,
        request: _Request,
        segmentation: SegmentationOutput,
        threshold: float | None,
    ) -> Prediction:
        spec = TASKS[task]
        score_threshold = spec.demo_score_threshold if threshold is None else threshold
        mask_threshold = (
            spec.mask_threshold if threshold is None or spec.mask_threshold is None else threshold
        )
        class_logits = segmentation.class_logits[-1, 0].float()
        mask_logits = segmentation.mask_logits[-1, 0].float()
        sizes = self._sizes(state)
        if task in (Task.GENERIC, Task.OPEN_VOCAB):
            prediction = _generic_prediction(
                task, request.categories, class_logits, mask_logits, sizes, score_threshold
            )
        elif task in (Task.REFERRING, Task.REASONING):
            result = postprocess.referring(class_logits, mask_logits, **sizes, mask_threshold=mask_threshold)
            prediction = Prediction(
                task.value, result.mask[None].cpu(), request.labels, [float(result.score)]
            )
        elif task is Task.INTERACTIVE:
            prompt = request.region_masks[0]
            result = postprocess.interactive(
                class_logits, mask_logits, **sizes, prompt_mask=prompt, threshold=score_threshold
            )
            prediction = Prediction(
                task.value, result.mask[None].cpu(), request.labels, [float(result.score)]
            )
        else:
            result = postprocess.visual_grounding(
                class_logits, mask_logits, **sizes, threshold=score_threshold
            )
            labels = [request.labels[int(i)] for i in result.labels]
            prediction = Prediction(task.value, result.masks.cpu(), labels, [float(s) for s in result.scores])
        prediction.logits = segmentation
        return prediction


# ---------------------------------------------------------------------------------------- helpers
def _category_spec(categories: Any) -> CategorySpec:
    if categories is None:
        raise ValueError("generic segmentation needs categories= ('ins: a, b; sem: c' or a list of names)")
    if isinstance(categories, CategorySpec):
        return categories
    if isinstance(categories, str):
        return parse_category_prompt(categories)
    return CategorySpec.from_names(things=list(categories))


def _is_sentence(query: str) -> bool:
    """ReasonSeg marks full-sentence queries; a short noun phrase gets the short-question template."""
    return query.rstrip().endswith(("?", ".", "!")) or len(query.split()) > 6


def _generic_prediction(
    task: Task,
    categories: CategorySpec,
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    sizes: dict[str, Any],
    threshold: float,
) -> Prediction:
    names = list(categories.names)
    if categories.kind is SegmentationKind.PANOPTIC:
        result = postprocess.panoptic(
            class_logits, mask_logits, **sizes, is_thing=list(categories.is_thing), threshold=threshold
        )
        first = {}
        for segment in result.segments:  # stuff segments of one class share an id: keep one entry
            first.setdefault(segment.id, segment)
        ids = sorted(first)
        masks = torch.stack([result.segmentation == i for i in ids]) if ids else _no_masks(sizes)
        segments = [dict(first[i].as_official(), label=names[first[i].label_id]) for i in ids]
        return Prediction(
            task.value,
            masks.cpu(),
            [names[first[i].label_id] for i in ids],
            [float(first[i].score) for i in ids],
            segmentation=result.segmentation.cpu(),
            segments=segments,
        )
    if categories.kind is SegmentationKind.INSTANCE:
        result = postprocess.instance(class_logits, mask_logits, **sizes, threshold=threshold)
        keep = result.masks.flatten(1).any(1)
        return Prediction(
            task.value,
            result.masks[keep].cpu(),
            [names[int(i)] for i in result.labels[keep]],
            [float(s) for s in result.scores[keep]],
        )
    label_map = postprocess.semantic(class_logits, mask_logits, **sizes)
    present = [int(i) for i in label_map.unique()]
    masks = torch.stack([label_map == i for i in present]) if present else _no_masks(sizes)
    # semantic segmentation has no per-segment score; 1.0 marks "assigned"
    return Prediction(
        task.value,
        masks.cpu(),
        [names[i] for i in present],
        [1.0] * len(present),
        segmentation=label_map.cpu(),
    )


def _no_masks(sizes: dict[str, Any]) -> torch.Tensor:
    return torch.zeros(0, *sizes["original_size"], dtype=torch.bool)


def _region_masks(
    size_hw: tuple[int, int], points: Any, boxes: Any, scribbles: Any, masks: Any
) -> torch.Tensor | None:
    """All visual prompts as ``(R, H, W)`` bool masks in the image frame, or None without any."""
    regions: list[np.ndarray] = []
    if points is not None:
        array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        regions += [point_mask(point[None], size_hw) for point in array]
    if boxes is not None:
        array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        regions += [box_mask(box, size_hw) for box in array]
    if scribbles is not None:
        regions += [scribble_mask(np.asarray(line, dtype=np.float64), size_hw) for line in scribbles]
    if masks is not None:
        array = np.asarray(masks)
        array = array[None] if array.ndim == 2 else array
        if array.ndim != 3 or array.shape[1:] != tuple(size_hw):
            raise ValueError(
                f"masks must be (H, W) or (N, H, W) with (H, W) = {tuple(size_hw)}, got {array.shape}"
            )
        regions += [m.astype(bool) for m in array]
    if not regions:
        return None
    stacked = torch.from_numpy(np.stack(regions))
    empty = [i for i, region in enumerate(stacked) if not region.any()]
    if empty:
        raise ValueError(f"visual prompts {empty} cover no pixel of the image")
    return stacked


_TAG = re.compile(r"</?p>|<SEG>")


def _phrases(raw: str) -> list[str]:
    """Text between ``<p>`` and ``</p>`` of generated text, stripped."""
    return [p.strip() for p in re.findall(r"<p>(.*?)</p>", raw, flags=re.S)]


def _caption(raw: str) -> str:
    """Generated text for display and metrics: sentences holding ``<SEG>`` dropped, tags removed."""
    sentences = re.split(r"(?<=[.!?])\s+", raw)
    kept = [s for s in sentences if "<SEG>" not in s]
    return re.sub(r"\s+", " ", _TAG.sub("", " ".join(kept))).strip()
