"""``XSamPredictor``: encode an image once, then answer many prompts of any task.

Per image it caches the encoder outputs (SigLIP and SAM tokens in LLM space, the pixel decoder's
features) and the language model's KV cache of the shared prefix ``[<s>, <|user|>, image tokens]``
(1,755 positions at official size). A prompt then runs only its own few dozen tokens through the LLM,
the mask decoder and post-processing; the cache is cropped back to the prefix afterwards, so prompts
never see each other.

The predictor has no task logic of its own: the task table (:mod:`xsam.tasks.registry`) checks each
prompt, builds its conversation and turns the model's output into a
:class:`~xsam.tasks.prediction.Prediction`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from PIL import Image
from transformers import Cache, PreTrainedTokenizerBase

from ..modeling.pretrained import tokenizer_directory
from ..modeling.xsam import ImageFeatures, SegmentationOutput, XSamModel
from ..processing import (
    Frame,
    ImagePolicy,
    load_image,
    preprocess_masks,
    preprocess_sam,
    preprocess_siglip,
)
from ..tasks.base import Prompt, TaskHandler, TaskRequest, check_max_new_tokens, check_threshold
from ..tasks.conversation import Turn, encode_conversation
from ..tasks.generic import CategorySpec
from ..tasks.prediction import Prediction
from ..tasks.registry import task_handler
from ..tasks.routing import AUTO, route, routed_prompt
from ..tasks.task import Task
from ..tokens import load_tokenizer

VOCABULARY_FILE = "vocabulary.json"
"""A model directory's list of the categories it was trained on (``{"ins": [...], "sem": [...]}``)."""

ImageLike = str | Path | Image.Image | np.ndarray


@dataclass
class ImageEncoding:
    """What :meth:`XSamPredictor.set_image` computes for one image, reusable with
    :meth:`XSamPredictor.use` (a server keeps several): the image, its frame on the SAM canvas, the
    encoders' features and the LLM's KV cache of the prefix ``[<s>, <|user|>, image tokens]``."""

    image: Image.Image
    frame: Frame
    features: ImageFeatures
    cache: Cache | None
    prefix_ids: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes held by its tensors (features and KV cache; the image itself not counted)."""
        tensors = [self.features.llm_tokens, self.features.seg_token_map, self.features.mask_features]
        tensors += list(self.features.multi_scale_features)
        if self.cache is not None:
            for layer in getattr(self.cache, "layers", []):
                tensors += [
                    t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None
                ]
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class ContextOverflowError(ValueError):
    """A prompt (with its chat history) that does not fit the language model's context."""


class BatchPredictionError(ValueError):
    """Some predictions of :meth:`XSamPredictor.predict_many` failed; the others are kept.

    Attributes:
        results: per image, per request: the prediction, or None where it failed.
        failures: ``(image index, request index or None for the image itself, error)``.
    """

    def __init__(
        self, results: list[list[Prediction | None]], failures: list[tuple[int, int | None, Exception]]
    ) -> None:
        self.results, self.failures = results, failures
        shown = "; ".join(
            f"image {image}{'' if number is None else f' request {number}'}: {error}"
            for image, number, error in failures[:5]
        )
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} prediction(s) failed: {shown}{more}")


@dataclass
class PredictorStats:
    """How often the expensive steps ran (tests use it to check that encoders run once per image)."""

    image_encodings: int = 0
    prefills: int = 0
    prompts: int = 0


class XSamPredictor:
    """Prompt an :class:`~xsam.modeling.xsam.XSamModel` many times per image.

    Args:
        model: the network (put it on its device and dtype first).
        tokenizer: default: the tokenizer saved in the model's directory, else the bundled Phi-3 one.
        use_cache: reuse the LLM's KV cache of the image prefix (exact; disable only to compare).
        seed: seeds the region sampler for prompts larger than its point budget.
        image_policy: how images are read (pixel limit, EXIF orientation); see
            :class:`~xsam.processing.ImagePolicy`.
    """

    def __init__(
        self,
        model: XSamModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        use_cache: bool = True,
        seed: int = 0,
        image_policy: ImagePolicy | None = None,
    ) -> None:
        if tokenizer is None:
            tokenizer = load_tokenizer(tokenizer_directory(model.name_or_path), tokens=model.config.tokens)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.use_cache = use_cache
        self.seed = seed
        self.image_policy = image_policy or ImagePolicy()
        self.stats = PredictorStats()
        self._state: ImageEncoding | None = None
        self._chat_history: list[Turn] = []

    # -------------------------------------------------------------------------------------- image
    @property
    def vocabulary(self) -> dict[str, list[str]] | None:
        """The categories the model was trained on, ``{"ins": [things], "sem": [stuff]}``, when its
        directory lists them in ``vocabulary.json``; None otherwise.

        Raises:
            ValueError: the file is not such a mapping (the message names it).
        """
        if self.model.name_or_path is None:
            return None
        path = Path(self.model.name_or_path) / VOCABULARY_FILE
        if not path.is_file():
            return None
        try:
            listing = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not readable JSON ({error})") from None
        if not (
            isinstance(listing, dict)
            and set(listing) <= {"ins", "sem"}
            and all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in listing.values())
        ):
            raise ValueError(f'{path} must map "ins" and "sem" to lists of category names')
        return {kind: list(listing.get(kind, [])) for kind in ("ins", "sem")}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image(self) -> Image.Image | None:
        """The current image as loaded (RGB), or None before :meth:`set_image`."""
        return None if self._state is None else self._state.image

    @torch.inference_mode()
    def set_image(self, image: ImageLike) -> None:
        """Load (path, PIL image or HWC array; see :func:`~xsam.processing.load_image`), encode and
        cache one image. The previous image is forgotten first, so a failure leaves no image set."""
        self.reset_image()
        picture = load_image(image, policy=self.image_policy)
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
        self._state = ImageEncoding(picture, sam.frame, features, cache, prefix_ids)
        self._chat_history = []

    @property
    def encoding(self) -> ImageEncoding | None:
        """The current image's encoding (None before :meth:`set_image`)."""
        return self._state

    def use(self, encoding: ImageEncoding) -> None:
        """Make an earlier encoding current again, without encoding anything; the chat restarts."""
        self._state = encoding
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
        tokens = self.model.config.tokens
        ids = encode_conversation(
            self.tokenizer, [Turn(f"{tokens.image_placeholder}\nx", "x")], tokens=tokens
        )
        image_position = int((ids.input_ids == tokens.image_token_index).nonzero()[0])
        return ids.input_ids[: image_position + 1]

    def _require_image(self) -> ImageEncoding:
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
        points: ArrayLike | None = None,
        boxes: ArrayLike | None = None,
        scribbles: Sequence[ArrayLike] | None = None,
        masks: ArrayLike | None = None,
        threshold: float | None = None,
        max_new_tokens: int = 512,
        is_sentence: bool | None = None,
        closed_set: bool = False,
        history: Sequence[tuple[str, str]] | None = None,
    ) -> Prediction:
        """Answer one prompt about the current image.

        Args:
            task: a :class:`~xsam.tasks.task.Task` or its value (``"generic"``, ``"referring"``, ...), or
                ``"auto"``: chosen from what the prompt contains (:mod:`xsam.tasks.routing`); the
                prediction's ``task`` says which.
            text: the expression (referring), query (reasoning) or message (chat).
            categories: generic / open-vocabulary classes: ``"ins: a, b; sem: c"`` (both -> panoptic,
                only ``ins`` -> instance, only ``sem`` -> semantic), a list of names (instance), or a
                :class:`~xsam.tasks.generic.CategorySpec`.
            points: ``(N, 2)`` x, y pixels; each point is one region (a disk of radius 10).
            boxes: ``(N, 4)`` x0, y0, x1, y1 pixels; each box is one filled region.
            scribbles: polylines, each ``(K, 2)`` x, y pixels, drawn 5 px thick.
            masks: ``(H, W)`` or ``(N, H, W)`` bool arrays, one region each.
            threshold: score threshold (default: the demo setting of the task, 0.5).
            max_new_tokens: generation budget for GCG and chat (capped to what is left of the language
                model's context after the image and the prompt).
            is_sentence: reasoning only: pick the long-question (True) or short-question (False)
                template, as ReasonSeg's ``is_sentence`` flag does; None guesses from the text.
            closed_set: generic only: segment with the stage-1 closed-set segmentor (mask decoder and
                closed-set head, no LLM) instead of prompting the LLM. Its head has a fixed class
                list, so ``categories`` must name exactly those classes, in the head's order; for
                instance segmentation, its first classes (the things, which COCO panoptic lists
                first; Mask2Former's instance inference likewise keeps the thing classes only).
            history: chat only: the earlier ``(question, answer)`` turns, used instead of (and not added
                to) the conversation the predictor remembers for this image.

        Visual prompts feed ``interactive`` (exactly one region) and ``vgd`` (one or more, in the
        order points, boxes, scribbles, masks).
        """
        state = self._require_image()
        check_threshold(threshold)
        check_max_new_tokens(max_new_tokens)
        prompt = Prompt(text, categories, points, boxes, scribbles, masks, is_sentence, closed_set, history)
        if task == AUTO:
            prompt = routed_prompt(prompt)
            task = route(prompt)
        handler = task_handler(task)
        request = handler.request(prompt, state.frame.original_size, self._chat_history)
        self.stats.prompts += 1
        if handler.generates:
            return self._generate(handler, state, request, max_new_tokens, remember=history is None)
        segmentation = (
            self._closed_set(handler, state, request)
            if closed_set
            else self._teacher_forced(handler, state, request)
        )
        class_logits = segmentation.class_logits[-1, 0].float()
        mask_logits = segmentation.mask_logits[-1, 0].float()
        prediction = handler.postprocess(request, class_logits, mask_logits, state.frame, threshold)
        prediction.logits = segmentation
        return prediction

    def predict_many(
        self,
        images: Iterable[ImageLike],
        requests: Sequence[Mapping[str, Any]],
        *,
        progress: bool = True,
        on_error: str = "raise",
    ) -> list[list[Prediction | None]]:
        """Run every request (keyword arguments of :meth:`predict`) on every image, encoding each once.

        A failing image or request never loses the others: every image is tried, and its failed
        predictions are None. ``on_error="raise"`` then raises a :class:`BatchPredictionError`
        holding all results and failures; ``"skip"`` returns the results with the Nones.
        """
        from tqdm.auto import tqdm

        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        images = list(images)
        results: list[list[Prediction | None]] = []
        failures: list[tuple[int, int | None, Exception]] = []
        for index, image in enumerate(tqdm(images, desc="images", disable=not progress)):
            try:
                self.set_image(image)
            except (ValueError, FileNotFoundError) as error:
                failures.append((index, None, error))
                results.append([None] * len(requests))
                continue
            results.append(
                [
                    self._predict_or_none(request, index, number, failures)
                    for number, request in enumerate(requests)
                ]
            )
        if failures and on_error == "raise":
            raise BatchPredictionError(results, failures)
        return results

    def _predict_or_none(
        self, request: Mapping[str, Any], image: int, number: int, failures: list
    ) -> Prediction | None:
        try:
            return self.predict(**request)
        except ValueError as error:
            failures.append((image, number, error))
            return None

    # ------------------------------------------------------------------------------------ running
    def _context_room(self, prompt_tokens: int, generates: bool) -> int:
        """Positions left in the LLM's context after the image's tokens and the prompt.

        Raises:
            ContextOverflowError: the prompt does not fit (a generated answer needs room for one token).
        """
        config = self.model.config
        context = int(config.language_model.hf_config.get("max_position_embeddings", 4096))
        image_tokens = config.num_image_tokens
        needed = prompt_tokens - 1 + image_tokens  # the <image> placeholder becomes the image's tokens
        if needed + int(generates) > context:
            raise ContextOverflowError(
                f"the prompt is too long: {prompt_tokens - 1} text tokens beside the image's {image_tokens} "
                f"tokens need {needed} positions{' and one to answer' if generates else ''}; "
                f"the language model has {context}"
            )
        return context - needed

    def _encode(
        self, state: ImageEncoding, request: TaskRequest, *, generates: bool = False
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor] | None, int]:
        """Model inputs of a request (the part after the cached prefix, or all of it uncached) and the
        room left in the context."""
        encoded = encode_conversation(self.tokenizer, request.turns, tokens=self.model.config.tokens)
        room = self._context_room(len(encoded.input_ids), generates)
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
        return inputs, regions, room

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def _teacher_forced(
        self, handler: TaskHandler, state: ImageEncoding, request: TaskRequest
    ) -> SegmentationOutput:
        inputs, regions, _ = self._encode(state, request)
        prefix_length = None if state.cache is None else state.cache.get_seq_length()
        try:
            out = self.model(
                **inputs,
                image_features=state.features,
                region_masks=regions,
                decode_per_seg=handler.decode_per_seg,
                generator=self._generator(),
                past_key_values=state.cache,
            )
        finally:
            if state.cache is not None:
                self.model.truncate_cache(state.cache, prefix_length)
        if out.segmentation is None:
            raise RuntimeError("the prompt produced no <SEG> token")
        return out.segmentation

    def _closed_set(
        self, handler: TaskHandler, state: ImageEncoding, request: TaskRequest
    ) -> SegmentationOutput:
        """The stage-1 segmentor on the cached features, its head restricted to the request's classes."""
        if self.model.closed_set_head is None:
            raise ValueError(
                "closed_set=True needs a model with a closed-set head (a stage-1 seg_finetune model)"
            )
        features = state.features
        class_logits, mask_logits = self.model.decode_closed_set(
            features.multi_scale_features, features.mask_features
        )
        class_logits = handler.closed_set_logits(request, class_logits)
        return SegmentationOutput(class_logits=class_logits, mask_logits=mask_logits)

    def _generate(
        self,
        handler: TaskHandler,
        state: ImageEncoding,
        request: TaskRequest,
        max_new_tokens: int,
        *,
        remember: bool = True,
    ) -> Prediction:
        inputs, regions, room = self._encode(state, request, generates=True)
        prefix_length = None if state.cache is None else state.cache.get_seq_length()
        tokens = self.model.config.tokens
        try:
            result = self.model.generate(
                inputs["input_ids"],
                cond_ids=inputs["cond_ids"],
                image_features=state.features,
                region_masks=regions,
                stop_token_ids=(tokens.end_token_id,),
                max_new_tokens=min(max_new_tokens, room),  # what is left of the context
                generator=self._generator(),
                past_key_values=state.cache,
            )
        finally:
            if state.cache is not None:
                self.model.truncate_cache(state.cache, prefix_length)
        text = self.tokenizer.decode(result.token_ids.tolist(), skip_special_tokens=False)
        text = text.split(tokens.end_token)[0].strip()
        if handler.keeps_history and remember:
            self._chat_history.append(Turn(request.turns[-1].question, text))
        segmentation = result.segmentation
        logits = None
        if segmentation is not None and handler.segments:
            logits = (segmentation.class_logits[-1, 0].float(), segmentation.mask_logits[-1, 0].float())
        prediction = handler.interpret(request, text, logits, state.frame)
        if len(prediction.masks):
            prediction.logits = segmentation
        return prediction
