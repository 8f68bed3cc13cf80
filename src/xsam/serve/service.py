"""The model side of the server: one predictor behind one worker thread, images' encodings cached by
content, and the calls every protocol shares (encode an image, answer a prompt, chat)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ..config import PRESETS, XSamConfig
from ..inference.predictor import ImageEncoding, XSamPredictor
from ..processing import DEFAULT_MAX_PIXELS, ImageError, ImagePolicy, PixelLimitError, load_image
from ..tasks.prediction import Prediction
from ..tasks.task import Task
from .worker import ImageCache, JobExpired, ModelWorker, QueueFull

logger = logging.getLogger("xsam.serve")
_Result = TypeVar("_Result")


@dataclass
class ServeSettings:
    """What ``xsam serve`` is started with (its flags); the defaults suit a laptop.

    Attributes:
        api_key: required on every route but the health checks when set.
        max_image_pixels: larger images are refused before decoding (413).
        max_body_bytes: larger request bodies are refused (413).
        cache_bytes: the images' encodings kept, in bytes (an official-size encoding with its LLM
            prefix is about 0.7 GB in bfloat16; the default model's about 5 MB).
        queue_size: requests that may wait for the model; more are refused with 503.
        timeout: seconds a request may wait and run before it gets 504.
        files_root: the folder Label Studio tasks may name local image paths in (None: no local paths).
    """

    api_key: str | None = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_body_bytes: int = 32 * 1024 * 1024
    cache_bytes: int = 2 * 1024**3
    queue_size: int = 8
    timeout: float = 120.0
    files_root: Path | None = None


class ApiError(Exception):
    """An expected failure: its HTTP status, a short code and a message for the client."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Answer:
    """A prediction and how it was obtained."""

    prediction: Prediction
    image: Any
    encode_ms: float
    prompt_ms: float
    cached: bool
    extras: dict[str, Any] = field(default_factory=dict)


class XSamService:
    """The predictor, its worker thread and its image cache.

    Args:
        predictor: wraps the model (on its device and dtype).
        settings: the server's limits.
        model_id: the model's name in responses.
    """

    def __init__(self, predictor: XSamPredictor, settings: ServeSettings, model_id: str) -> None:
        self.predictor = predictor
        self.settings = settings
        self.model_id = model_id
        self.policy = ImagePolicy(max_pixels=settings.max_image_pixels)
        self.cache = ImageCache(settings.cache_bytes)
        self.worker = ModelWorker(settings.queue_size)

    # ----------------------------------------------------------------------------------- running
    async def run(self, function: Callable[..., _Result], *args: Any) -> _Result:
        """Run ``function(*args)`` on the worker thread; 503 when the queue is full, 504 on timeout,
        400 / 413 for bad input, 500 (no details) for anything unexpected."""
        try:
            future = self.worker.submit(partial(function, *args), self.settings.timeout)
        except QueueFull as error:
            raise ApiError(503, "busy", str(error), {"Retry-After": str(error.retry_after)}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.timeout)
        except (TimeoutError, JobExpired):
            raise ApiError(504, "timeout", f"no answer within {self.settings.timeout:g} s") from None
        except PixelLimitError as error:
            raise ApiError(413, "image_too_large", str(error)) from None
        except (ValueError, ImageError) as error:
            raise ApiError(400, "invalid_request", str(error)) from None
        except ApiError:
            raise
        except Exception:
            logger.exception("request failed")
            raise ApiError(500, "internal_error", "the request failed inside the server") from None

    def close(self) -> None:
        self.worker.close()

    # -------------------------------------------------------------------- worker-side operations
    def encode(self, data: bytes) -> tuple[str, ImageEncoding, float, bool]:
        """``(image_id, encoding, encode_ms, cached)`` of an encoded image; the id is its content hash."""
        image_id = hashlib.sha256(data).hexdigest()[:32]
        encoding = self.cache.get(image_id)
        if encoding is not None:
            return image_id, encoding, 0.0, True
        start = time.perf_counter()
        try:
            self.predictor.set_image(load_image(data, policy=self.policy))
            encoding = self.predictor.encoding
        finally:
            self.predictor.reset_image()
        self.cache.put(image_id, encoding)
        return image_id, encoding, _ms(start), False

    def encoding_of(self, image_id: str) -> ImageEncoding:
        encoding = self.cache.get(image_id)
        if encoding is None:
            raise ApiError(
                404, "unknown_image", f"no image {image_id!r} (never uploaded, deleted or evicted)"
            )
        return encoding

    def answer(
        self, image: str | bytes, requests: Sequence[dict[str, Any]], prepare: Callable | None = None
    ) -> list[Answer]:
        """Every request about one image (an id from the cache, or its bytes), encoded once.

        ``prepare(encoding, request) -> request`` may turn wire values into predictor arguments once
        the image size is known (mask prompts).
        """
        if isinstance(image, str):
            encoding, encode_ms, cached = self.encoding_of(image), 0.0, True
        else:
            _, encoding, encode_ms, cached = self.encode(image)
        answers = []
        try:
            for request in requests:
                self.predictor.use(encoding)
                arguments = prepare(encoding, request) if prepare is not None else request
                start = time.perf_counter()
                prediction = self.predictor.predict(**arguments)
                answers.append(Answer(prediction, encoding.image, encode_ms, _ms(start), cached))
                encode_ms, cached = 0.0, True  # the next ones reuse the encoding
        finally:
            self.predictor.reset_image()  # only the cache keeps encodings between requests
        return answers

    def forget(self, image_id: str) -> bool:
        return self.cache.remove(image_id)

    # ----------------------------------------------------------------------------------- facts
    def model_info(self) -> dict[str, Any]:
        model = self.predictor.model
        return {
            "id": self.model_id,
            "preset": _preset_of(model.config),
            "tasks": ["auto", *(task.value for task in Task)],
            "dtype": str(self.predictor.dtype).removeprefix("torch."),
            "device": str(self.predictor.device),
        }


def _preset_of(config: XSamConfig) -> str:
    """The preset the config is (a closed-set head of any size aside), else ``custom``."""
    ours = config.to_dict()
    for name in PRESETS:
        preset = XSamConfig.preset(name).to_dict()
        ours["mask_decoder"]["num_closed_set_classes"] = preset["mask_decoder"]["num_closed_set_classes"]
        if ours == preset:
            return name
    return "custom"


def _ms(start: float) -> float:
    return round(1000 * (time.perf_counter() - start), 2)
