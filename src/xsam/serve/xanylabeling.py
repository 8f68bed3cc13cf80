"""The X-AnyLabeling remote-server protocol, under ``/x-anylabeling``: point X-AnyLabeling's remote
server at ``http://HOST:PORT/x-anylabeling`` (and its API key setting at ``--api-key``, sent as a
``Token`` header).

Implemented from the protocol's published facts (routes and payload fields). Masks travel as polygons
(all contours of one instance share a ``group_id``); GCG captions and chat answers travel as the
``description``. Marks make one region: the union of the positive points and rectangles minus the
negative points, segmented as interactive segmentation (X-SAM has no negative clicks of its own).
Errors are ``{"success": false, "error": {code, message}}``; a bad request answers with status 200, as
the protocol has it, while a refused key (401), an oversized body or image (413) and a busy or slow
server (503, 504) keep their status.
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..processing import box_mask, point_mask
from .masks import decode_image_string, mask_to_polygons
from .service import Answer, ApiError, XSamService

X_ANYLABELING_PREFIX = "/x-anylabeling"

_WIDGETS = (
    "edit_text",
    "button_send",
    "button_add_point",
    "button_remove_point",
    "button_add_rect",
    "button_clear",
    "button_finish_object",
    "edit_conf",
    "toggle_preserve_existing_annotations",
)
_TEXT, _MARKS = ("edit_text", "button_send"), ("button_add_point", "button_remove_point", "button_add_rect")
_TASKS = {
    "auto": (
        "Auto",
        "the task is chosen from the prompt: marks, a category list, a phrase, a question",
        _TEXT + _MARKS,
    ),
    "interactive": ("Interactive segmentation", "the object under the points and boxes", _MARKS),
    "generic": ("Generic segmentation", "categories as 'ins: person, car; sem: sky'", _TEXT),
    "referring": ("Referring segmentation", "the object a phrase names", _TEXT),
    "reasoning": ("Reasoning segmentation", "the object a sentence implies", _TEXT),
    "gcg": ("Grounded caption", "a caption with a mask per phrase", ("button_send",)),
    "vgd": ("Visual grounding", "every object like each marked region", _MARKS),
    "chat": ("Chat", "an answer about the image, in the description", _TEXT),
}


class Mark(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    data: list[float]
    label: int = 1


class Params(BaseModel):
    model_config = ConfigDict(extra="allow")
    conf_threshold: float | None = Field(default=None, ge=0, le=1)
    text_prompt: str | None = Field(default=None, max_length=20000)
    marks: list[Mark] | None = None
    current_task: str | None = None


class XPredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    image: str
    params: Params = Field(default_factory=Params)


def x_anylabeling_router(service: XSamService) -> APIRouter:
    """The protocol's routes (mounted under :data:`X_ANYLABELING_PREFIX`)."""
    router = APIRouter(tags=["x-anylabeling"])

    @router.get("/health")
    async def health() -> dict[str, Any]:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        return {"status": "healthy", "models_loaded": 1, "timestamp": now}

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"success": True, "data": {service.model_id: _model_entry(service)}}

    @router.get("/v1/models/{model_id}/info")
    async def info(model_id: str) -> dict[str, Any]:
        _check_model(service, model_id)
        return {"success": True, "data": {"model_id": model_id, **_model_entry(service)}}

    @router.post("/v1/predict")
    async def predict(body: XPredictRequest) -> dict[str, Any]:
        _check_model(service, body.model)
        data = _image_bytes(body.image)
        (answer,) = await service.run(service.answer, data, [body.params], _arguments)
        return {"success": True, "data": _shapes(answer, body.params)}

    return router


def _model_entry(service: XSamService) -> dict[str, Any]:
    tasks = [
        {
            "id": key,
            "name": name,
            "description": text,
            "batch_processing_mode": "text_prompt",
            "active_widgets": list(widgets),
        }
        for key, (name, text, widgets) in _TASKS.items()
    ]
    return {
        "display_name": f"X-SAM ({service.model_id})",
        "widgets": [{"name": name, "value": 0.5 if name == "edit_conf" else None} for name in _WIDGETS],
        "params": {"conf_threshold": 0.5},
        "capabilities": {},
        "batch_processing_mode": "text_prompt",
        "available_tasks": tasks,
    }


def _check_model(service: XSamService, model_id: str) -> None:
    if model_id != service.model_id:
        raise ApiError(
            404, "model_not_found", f"model {model_id!r} is not loaded (this server has {service.model_id!r})"
        )


def _image_bytes(text: str) -> bytes:
    try:
        return decode_image_string(text)
    except ValueError as error:
        raise ApiError(400, "invalid_image", str(error)) from None


def _arguments(encoding: Any, params: Params) -> dict[str, Any]:
    """Predictor arguments of the protocol's params (worker thread, image size known)."""
    task = params.current_task or "auto"
    if task not in _TASKS:
        raise ValueError(f"unknown current_task {task!r}; one of {', '.join(_TASKS)}")
    arguments: dict[str, Any] = {"task": task, "threshold": params.conf_threshold}
    size = (encoding.image.height, encoding.image.width)
    if params.marks:
        region = _region(params.marks, size)
        if task == "vgd":
            arguments["masks"] = region[None]
        else:
            arguments["masks"] = region
            arguments["task"] = "interactive" if task == "auto" else task
    if params.text_prompt and params.text_prompt.strip():
        arguments["text"] = params.text_prompt
    if arguments["task"] == "generic" and "text" in arguments:
        categories = arguments.pop("text")
        arguments["categories"] = categories if ":" in categories else f"ins: {categories}"
    return {key: value for key, value in arguments.items() if value is not None}


def _region(marks: list[Mark], size: tuple[int, int]) -> np.ndarray:
    """The union of positive points (disks) and rectangles, minus negative points."""
    positive, negative = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    for index, mark in enumerate(marks):
        if mark.type == "point" and len(mark.data) == 2:
            disk = point_mask(np.array([mark.data]), size)
            (positive if mark.label else negative)[disk] = True
        elif mark.type == "rectangle" and len(mark.data) == 4:
            x1, y1, x2, y2 = mark.data
            positive |= box_mask((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), size)
        else:
            raise ValueError(f"mark {index}: expected a point [x, y] or a rectangle [x1, y1, x2, y2]")
    region = positive & ~negative
    if not region.any():
        raise ValueError("the marks leave no region: give a positive point or a rectangle")
    return region


def _shapes(answer: Answer, params: Params) -> dict[str, Any]:
    prediction = answer.prediction
    shapes = []
    for group, (mask, label, score) in enumerate(
        zip(prediction.masks, prediction.labels, prediction.scores, strict=True)
    ):
        for polygon in mask_to_polygons(mask.numpy()):
            shapes.append(
                {
                    "label": label,
                    "shape_type": "polygon",
                    "points": polygon,
                    "score": float(score),
                    "group_id": group,
                    "description": label if label in prediction.phrases else None,
                    "attributes": {},
                }
            )
    description = prediction.text or ""
    return {"shapes": shapes, "description": description, "replace": False}
