"""The Label Studio ML backend protocol, under ``/label-studio``: in a project's Model settings, add
``http://HOST:PORT/label-studio`` (with basic auth whose password is ``--api-key`` when one is set).

Implemented from the protocol's published facts. A labeling config needs a ``<BrushLabels>`` over an
``<Image>``; predictions come back as ``brushlabels`` results in Label Studio's own brush RLE
(:func:`~xsam.serve.masks.brush_rle`, not COCO RLE). With an interactive context (keypoints,
rectangles, a ``TextArea`` prompt) the model segments what was marked or named; without one it
pre-annotates every label of the config as instance segmentation.

Task images may be data URLs, local files under ``--files-root``, or URLs of the Label Studio server
itself (``/data/upload/...``, ``/data/local-files/?d=...``): those are fetched from
``LABEL_STUDIO_URL`` with the API token in ``LABEL_STUDIO_API_KEY`` (``Authorization: Token ...``).
"""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..processing import box_mask, point_mask
from .masks import brush_rle, decode_image_string
from .service import Answer, ApiError, XSamService

LABEL_STUDIO_PREFIX = "/label-studio"
MODEL_CLASS = "XSam"
_FETCH_LIMIT_S = 30.0


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: str | int | None = None
    schema_: str | None = Field(default=None, alias="schema")
    extra_params: Any = None


class LSPredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(min_length=1, max_length=64)
    model_version: str | None = None
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


@dataclass
class _Config:
    """What the labeling config says: the brush tag, the image tag, its data key and the labels."""

    from_name: str
    to_name: str
    data_key: str
    labels: list[str]


def label_studio_router(service: XSamService) -> APIRouter:
    """The protocol's routes (mounted under :data:`LABEL_STUDIO_PREFIX`)."""
    router = APIRouter(tags=["label-studio"])

    @router.get("/health")
    @router.get("/")
    async def health() -> dict[str, str]:
        return {"status": "UP", "model_class": MODEL_CLASS}

    @router.post("/setup")
    async def setup(body: SetupRequest) -> dict[str, str]:
        if body.schema_:
            _parse_config(body.schema_)  # refuse a config without brush labels now, not at predict
        return {"model_version": service.model_id}

    @router.post("/predict")
    async def predict(body: LSPredictRequest) -> dict[str, Any]:
        config = _parse_config(body.label_config or "")
        context = body.params.get("context") or {}
        results = []
        for task in body.tasks:
            data = _task_image(task, config, service)
            arguments = _request_of(context, config)
            (answer,) = await service.run(service.answer, data, [arguments], _rasterise)
            results.append(_result(answer, config, _label_of(context, config), service.model_id))
        return {"results": results}

    @router.post("/webhook")
    async def webhook() -> dict[str, str]:
        """Training events are accepted and ignored (the model does not train online)."""
        return {"status": "ok"}

    @router.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return {}

    return router


def _parse_config(label_config: str) -> _Config:
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        raise ApiError(400, "invalid_request", f"label_config is not valid XML ({error})") from None
    brushes = [element for element in root.iter() if element.tag.lower() == "brushlabels"]
    images = {element.get("name"): element for element in root.iter() if element.tag.lower() == "image"}
    if not brushes or brushes[0].get("toName") not in images:
        raise ApiError(
            400, "invalid_request", "label_config needs a <BrushLabels toName=...> over an <Image>"
        )
    brush = brushes[0]
    image = images[brush.get("toName")]
    labels = [label.get("value") for label in brush if label.get("value")]
    return _Config(
        brush.get("name"), brush.get("toName"), (image.get("value") or "$image").lstrip("$"), labels
    )


def _task_image(task: dict[str, Any], config: _Config, service: XSamService) -> bytes:
    reference = (task.get("data") or {}).get(config.data_key)
    if not isinstance(reference, str) or not reference:
        raise ApiError(
            400, "invalid_request", f"task {task.get('id')}: no image in data[{config.data_key!r}]"
        )
    if reference.startswith("data:"):
        return decode_image_string(reference)
    if reference.startswith(("http://", "https://", "/data/")):
        return _fetch(reference)
    return _local_file(reference, service.settings.files_root)


def _local_file(reference: str, root: Path | None) -> bytes:
    if root is None:
        raise ApiError(400, "invalid_request", f"{reference}: local paths need the server's --files-root")
    path = (root / reference.lstrip("/")).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise ApiError(404, "not_found", f"{reference}: no such file under --files-root")
    return path.read_bytes()


def _fetch(reference: str) -> bytes:
    import httpx

    base, key = os.environ.get("LABEL_STUDIO_URL", ""), os.environ.get("LABEL_STUDIO_API_KEY", "")
    if reference.startswith("/"):
        if not base:
            raise ApiError(
                400,
                "invalid_request",
                f"{reference}: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) to fetch it",
            )
        reference = base.rstrip("/") + reference
    elif not base or not reference.startswith(base.rstrip("/")):
        raise ApiError(400, "invalid_request", f"{reference}: only images of LABEL_STUDIO_URL are fetched")
    headers = {"Authorization": f"Token {key}"} if key else {}
    try:
        response = httpx.get(reference, headers=headers, timeout=_FETCH_LIMIT_S, follow_redirects=False)
    except httpx.HTTPError as error:
        raise ApiError(400, "invalid_request", f"{reference}: cannot fetch ({error})") from None
    if response.status_code != 200:
        raise ApiError(400, "invalid_request", f"{reference}: Label Studio answered {response.status_code}")
    return response.content


def _request_of(context: dict[str, Any], config: _Config) -> dict[str, Any]:
    """Predictor arguments from the interactive context (or pre-annotation of every label)."""
    marks, text = [], None
    for item in context.get("result") or []:
        kind, value = str(item.get("type", "")).lower(), item.get("value") or {}
        if kind in ("keypointlabels", "rectanglelabels"):
            marks.append(item)
        elif kind == "textarea" and value.get("text"):
            text = str(value["text"][0])
    if marks:
        return {"task": "interactive", "marks": marks}
    if text:
        return {"task": "auto", "text": text}
    if not config.labels:
        raise ApiError(400, "invalid_request", "no context and no labels in the config's <BrushLabels>")
    return {"task": "generic", "categories": config.labels}


def _rasterise(encoding: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Turn the context's percent coordinates into one region mask (worker thread, size known)."""
    if "marks" not in request:
        return request
    height, width = encoding.image.height, encoding.image.width
    positive, negative = np.zeros((height, width), dtype=bool), np.zeros((height, width), dtype=bool)
    for item in request["marks"]:
        value = item.get("value") or {}
        scale_x = float(item.get("original_width") or width) / 100.0
        scale_y = float(item.get("original_height") or height) / 100.0
        x, y = float(value.get("x", 0)) * scale_x, float(value.get("y", 0)) * scale_y
        if str(item.get("type")).lower() == "keypointlabels":
            disk = point_mask(np.array([[x, y]]), (height, width))
            (positive if item.get("is_positive", True) else negative)[disk] = True
        else:
            right, bottom = (
                x + float(value.get("width", 0)) * scale_x,
                y + float(value.get("height", 0)) * scale_y,
            )
            positive |= box_mask((x, y, right, bottom), (height, width))
    region = positive & ~negative
    if not region.any():
        raise ValueError("the context's keypoints and rectangles leave no region")
    return {"task": "interactive", "masks": region}


def _label_of(context: dict[str, Any], config: _Config) -> str | None:
    """The label the user picked with the keypoint or rectangle, if it is one of the brush labels."""
    for item in context.get("result") or []:
        value = item.get("value") or {}
        for key in ("keypointlabels", "rectanglelabels"):
            for label in value.get(key) or []:
                if label in config.labels:
                    return label
    return None


def _result(answer: Answer, config: _Config, label: str | None, model_version: str) -> dict[str, Any]:
    prediction = answer.prediction
    width, height = answer.image.width, answer.image.height
    items = []
    for mask, name, score in zip(prediction.masks, prediction.labels, prediction.scores, strict=True):
        items.append(
            {
                "id": uuid.uuid4().hex[:10],
                "from_name": config.from_name,
                "to_name": config.to_name,
                "type": "brushlabels",
                "value": {"format": "rle", "rle": brush_rle(mask.numpy()), "brushlabels": [label or name]},
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "score": float(score),
            }
        )
    score = float(np.mean(prediction.scores)) if prediction.scores else 0.0
    return {"result": items, "model_version": model_version, "score": score}
