"""What the web demo does, without the web: drawn layers into visual prompts, one request answered
with the session's cached encoding, and the answer shaped for the page (overlay, instance rows, the
caption's phrases in their masks' colours, the chat, timing, downloads).

Nothing here imports Gradio, so every step is testable on its own; :mod:`xsam.demo.app` wires these
functions to the page.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from ..inference.predictor import ContextOverflowError, ImageEncoding, XSamPredictor
from ..inference.visualize import mask_colours, overlay
from ..processing import ImageError, load_image
from ..tasks.base import Prompt
from ..tasks.prediction import Prediction
from ..tasks.routing import AUTO, route, routed_prompt
from ..tasks.task import Task

DRAWING_KINDS = ("points", "boxes", "scribbles", "masks")
"""How drawn layers are read: every dot is a point; every layer is one box (its extent), one scribble
(its strokes) or one mask (its strokes, holes filled)."""

TASK_CHOICES = (AUTO, *(task.value for task in Task))
DEFAULT_THRESHOLD = 0.5
CHAT_TURNS_KEPT = 8
"""Chat turns sent back to the model with a new question (older ones are dropped from the prompt)."""


class DemoError(ValueError):
    """A request the demo cannot answer, with a message meant for the page."""


@dataclass
class Session:
    """One browser session: the last image's encoding and the chat about it."""

    image_key: str | None = None
    encoding: ImageEncoding | None = None
    chat: list[tuple[str, str]] = field(default_factory=list)

    def forget(self) -> None:
        self.image_key, self.encoding, self.chat = None, None, []


@dataclass
class Request:
    """One run of the page: the image, what was drawn on it and the controls."""

    image: Image.Image | np.ndarray | str
    layers: Sequence[np.ndarray] = ()
    task: str = AUTO
    text: str = ""
    drawing: str = "points"
    threshold: float = DEFAULT_THRESHOLD
    scores: bool = True
    max_new_tokens: int = 256
    prompts: dict[str, Any] = field(default_factory=dict)
    """Visual prompts given as coordinates (``points``, ``boxes``; for scripts) instead of drawn."""


@dataclass
class Answer:
    """A prediction shaped for the page."""

    prediction: Prediction
    picture: Image.Image
    rows: list[list[Any]]
    caption: list[tuple[str, str | None]]
    colours: dict[str, str]
    status: str
    reused: bool
    result: dict[str, Any]


# ---------------------------------------------------------------------------------- visual prompts
def drawn_regions(layers: Sequence[np.ndarray], drawing: str, size_hw: tuple[int, int]) -> dict[str, Any]:
    """Predictor keyword arguments (``points``, ``boxes`` or ``masks``) for what was drawn on ``layers``
    (RGBA or 2-D arrays of the image's size; drawn = alpha > 0), read as ``drawing``.

    Raises:
        DemoError: an unknown drawing kind, or layers of another size.
    """
    if drawing not in DRAWING_KINDS:
        raise DemoError(f"unknown drawing kind {drawing!r}; choose one of {', '.join(DRAWING_KINDS)}")
    drawn = [_drawn(layer, size_hw, index) for index, layer in enumerate(layers)]
    drawn = [mask for mask in drawn if mask.any()]
    if not drawn:
        return {}
    if drawing == "points":
        return {"points": [point for mask in drawn for point in _dot_centres(mask)]}
    if drawing == "boxes":
        return {"boxes": [_extent(mask) for mask in drawn]}
    if drawing == "masks":
        drawn = [ndimage.binary_fill_holes(mask) for mask in drawn]
    return {"masks": np.stack(drawn)}


def _drawn(layer: np.ndarray, size_hw: tuple[int, int], index: int) -> np.ndarray:
    layer = np.asarray(layer)
    rgba = layer.ndim == 3 and layer.shape[2] == 4
    mask = layer[..., 3] > 0 if rgba else layer.reshape(layer.shape[:2]) > 0
    if mask.shape != tuple(size_hw):
        height, width = size_hw
        raise DemoError(
            f"drawing layer {index + 1} is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}"
        )
    return mask


def _dot_centres(mask: np.ndarray) -> list[list[float]]:
    """The centre of every separate dot (8-connected part) of a layer, in image pixels."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    centres = ndimage.center_of_mass(mask, labels, range(1, count + 1))
    return [[round(float(x), 1), round(float(y), 1)] for y, x in centres]


def _extent(mask: np.ndarray) -> list[float]:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(columns[0]), float(rows[0]), float(columns[-1]), float(rows[-1])]


# ---------------------------------------------------------------------------------------- answering
class Demo:
    """The model behind the page: one predictor shared by every session, used one request at a time.

    Args:
        predictor: wraps the model.
        model_name: shown on the page.
    """

    def __init__(self, predictor: XSamPredictor, model_name: str) -> None:
        self.predictor = predictor
        self.model_name = model_name
        self._lock = threading.Lock()

    def vocabulary_text(self) -> str:
        """The model's known categories in the prompt syntax (``ins: …; sem: …``), or ``""``."""
        vocabulary = self.predictor.vocabulary or {}
        parts = [f"{kind}: {', '.join(names)}" for kind, names in vocabulary.items() if names]
        return "; ".join(parts)

    def answer(self, session: Session, request: Request, progress: Any = None) -> Answer:
        """Answer one request, encoding the image only when the session has not seen it.

        Raises:
            DemoError: no image, a bad image, a prompt the task cannot take.
        """
        if request.image is None:
            raise DemoError("upload an image first (or pick an example below it)")
        try:
            image = load_image(request.image, policy=self.predictor.image_policy)
        except ImageError as error:
            raise DemoError(str(error)) from None
        key = hashlib.sha256(image.tobytes()).hexdigest()
        arguments = self._arguments(request, (image.height, image.width), session, key)
        with self._lock:
            reused = session.image_key == key and session.encoding is not None
            encode_ms = 0.0
            if reused:
                self.predictor.use(session.encoding)
            else:
                _report(progress, 0.1, "encoding the image")
                start = time.perf_counter()
                self.predictor.set_image(image)
                encode_ms = 1000 * (time.perf_counter() - start)
                session.image_key, session.encoding, session.chat = key, self.predictor.encoding, []
            _report(progress, 0.5, "answering")
            start = time.perf_counter()
            try:
                prediction = self._predict(arguments)
            except ValueError as error:
                raise DemoError(str(error)) from None
            finally:
                self.predictor.reset_image()
            prompt_ms = 1000 * (time.perf_counter() - start)
        if prediction.task == Task.CHAT.value:
            session.chat.append((arguments["text"], prediction.text or ""))
        return self._shape(prediction, image, request.task, request.scores, reused, (encode_ms, prompt_ms))

    def _predict(self, arguments: dict[str, Any]) -> Prediction:
        """Predict; a chat whose history overflows the context drops its oldest turns until it fits."""
        while True:
            try:
                return self.predictor.predict(**arguments)
            except ContextOverflowError:
                if not arguments.get("history"):
                    raise
                arguments["history"] = arguments["history"][1:]

    def _arguments(
        self, request: Request, size_hw: tuple[int, int], session: Session, key: str
    ) -> dict[str, Any]:
        if request.task not in TASK_CHOICES:
            raise DemoError(f"unknown task {request.task!r}; choose one of {', '.join(TASK_CHOICES)}")
        arguments: dict[str, Any] = {
            "task": request.task,
            "threshold": request.threshold,
            "max_new_tokens": request.max_new_tokens,
        }
        arguments.update(request.prompts or drawn_regions(request.layers, request.drawing, size_hw))
        text = (request.text or "").strip()
        if request.task == Task.GENERIC.value or request.task == Task.OPEN_VOCAB.value:
            if not text:
                raise DemoError("generic segmentation needs categories, e.g. 'ins: person, car; sem: sky'")
            arguments["categories"] = text if ":" in text else f"ins: {text}"
        elif text:
            arguments["text"] = text
        if request.task == AUTO:  # routed here, so that only a chat gets the history
            fields = ("text", "categories", "points", "boxes", "masks")
            prompt = routed_prompt(Prompt(**{name: arguments.get(name) for name in fields}))
            arguments["task"] = route(prompt).value
            arguments.pop("text", None)
            arguments.update(
                {name: getattr(prompt, name) for name in fields if getattr(prompt, name) is not None}
            )
        if arguments["task"] == Task.CHAT.value and session.image_key == key and session.chat:
            arguments["history"] = session.chat[-CHAT_TURNS_KEPT:]
        return arguments

    def _shape(
        self,
        prediction: Prediction,
        image: Image.Image,
        task: str,
        scores: bool,
        reused: bool,
        timing_ms: tuple[float, float],
    ) -> Answer:
        colours = mask_colours(image, prediction)
        picture = overlay(image, prediction, scores=scores)
        rows = [
            [index, label, round(float(score), 3), int(mask.sum())]
            for index, (mask, label, score) in enumerate(
                zip(prediction.masks, prediction.labels, prediction.scores, strict=True)
            )
        ]
        named = {label: _hex(colour) for label, colour in zip(prediction.labels, colours, strict=True)}
        chosen = prediction.task + (" (chosen from the prompt)" if task == AUTO else "")
        encode_ms, prompt_ms = timing_ms
        encoding = (
            "reused the cached image encoding" if reused else f"encoded the image in {encode_ms:.0f} ms"
        )
        status = f"**task:** {chosen} · {encoding} · answered in {prompt_ms:.0f} ms · {len(rows)} masks"
        spans = caption_spans(prediction)
        return Answer(prediction, picture, rows, spans, named, status, reused, prediction.to_dict())


def _route(arguments: dict[str, Any]) -> None:
    """Replace ``task="auto"`` in predictor arguments by the task the prompt asks for."""
    fields = ("text", "categories", "points", "boxes", "masks")
    prompt = routed_prompt(Prompt(**{name: arguments.pop(name, None) for name in fields}))
    arguments["task"] = route(prompt).value
    arguments.update({name: getattr(prompt, name) for name in fields if getattr(prompt, name) is not None})


def caption_spans(prediction: Prediction) -> list[tuple[str, str | None]]:
    """The caption split into ``(text, phrase or None)`` spans: each grounded phrase (in order) marked,
    so the page can colour it as its mask."""
    text = prediction.text or ""
    spans: list[tuple[str, str | None]] = []
    cursor = 0
    for phrase in prediction.phrases:
        found = text.find(phrase, cursor)
        if found < 0:
            continue
        if found > cursor:
            spans.append((text[cursor:found], None))
        spans.append((phrase, phrase))
        cursor = found + len(phrase)
    if cursor < len(text):
        spans.append((text[cursor:], None))
    return spans


def result_json(answer: Answer) -> str:
    """The downloadable result: the prediction with COCO RLE masks."""
    return json.dumps(answer.result, indent=1)


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _report(progress: Any, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, desc=message)
