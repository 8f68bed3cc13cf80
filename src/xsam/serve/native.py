"""The native API under ``/v1``: upload an image once, then predict and chat about it.

Masks come back as COCO RLE (column-major, as pycocotools writes it), optionally as polygons and
PNGs; several prompts about one image in one call (a list) share its encoding.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from ..inference.visualize import overlay
from .masks import (
    bounding_box,
    decode_image_string,
    id_map_png_base64,
    mask_from_wire,
    mask_png_base64,
    mask_to_polygons,
    png_base64,
    rle_of,
)
from .schemas import (
    ChatRequest,
    ChatResponse,
    ImageInfo,
    ImageUpload,
    Instance,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
    Timing,
)
from .service import Answer, ApiError, XSamService

_PREDICT_FIELDS = (
    "task",
    "text",
    "categories",
    "points",
    "boxes",
    "scribbles",
    "threshold",
    "max_new_tokens",
    "is_sentence",
)


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/json": {"schema": ImageUpload.model_json_schema()},
        },
    }
}
"""``POST /v1/images`` reads its body itself (a file or JSON): this documents both forms."""


def native_router(service: XSamService) -> APIRouter:
    """The ``/v1`` routes of ``service``."""
    router = APIRouter(prefix="/v1", tags=["native"])

    @router.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(models=[ModelInfo(**service.model_info())])

    @router.post(
        "/images", response_model=ImageInfo, responses={400: {}, 413: {}}, openapi_extra=_UPLOAD_BODY
    )
    async def upload(request: Request) -> ImageInfo:
        """Upload an image once: multipart (a ``file`` field) or JSON ``{"image": base64}``."""
        data = await _image_bytes(request)
        image_id, encoding, _, _ = await service.run(service.encode, data)
        return ImageInfo(
            image_id=image_id,
            width=encoding.image.width,
            height=encoding.image.height,
            cached=image_id in service.cache,
        )

    @router.delete("/images/{image_id}", status_code=204, responses={404: {}})
    async def delete(image_id: str) -> Response:
        if not await service.run(service.forget, image_id):
            raise ApiError(404, "unknown_image", f"no image {image_id!r}")
        return Response(status_code=204)

    @router.post(
        "/predict", response_model=PredictResponse | list[PredictResponse], responses={400: {}, 404: {}}
    )
    async def predict(body: PredictRequest | list[PredictRequest]) -> PredictResponse | list[PredictResponse]:
        """One prompt, or a list (prompts about one image share its encoding)."""
        requests = body if isinstance(body, list) else [body]
        if not requests:
            raise ApiError(422, "invalid_request", "the list of requests is empty")
        answers = await service.run(_answer_all, service, requests)
        responses = [
            _response(answer, request, service.model_id)
            for answer, request in zip(answers, requests, strict=True)
        ]
        return responses if isinstance(body, list) else responses[0]

    @router.post("/chat", response_model=ChatResponse, responses={400: {}, 404: {}})
    async def chat(body: ChatRequest) -> ChatResponse:
        """A conversation with its whole history in the request; the server keeps none."""
        question, history = _conversation(body)
        arguments = {
            "task": "chat",
            "text": question,
            "history": history,
            "max_new_tokens": body.max_new_tokens,
        }
        (answer,) = await service.run(service.answer, _image_of(body), [arguments])
        timing = Timing(encode_ms=answer.encode_ms, prompt_ms=answer.prompt_ms, cached=answer.cached)
        return ChatResponse(text=answer.prediction.text or "", timing=timing, model=service.model_id)

    return router


async def _image_bytes(request: Request) -> bytes:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(
                400, "invalid_request", "the multipart body needs a 'file' field holding the image"
            )
        return await upload.read()
    try:
        body = ImageUpload.model_validate(await request.json())
    except ValueError as error:
        raise ApiError(
            422, "invalid_request", f"expected a multipart file or JSON {{'image': base64}}: {error}"
        ) from None
    return decode_image_string(body.image)


def _image_of(request: PredictRequest | ChatRequest) -> str | bytes:
    """The cache id, or the decoded bytes of an inline image."""
    return request.image_id if request.image_id is not None else decode_image_string(request.image)


def _answer_all(service: XSamService, requests: list[PredictRequest]) -> list[Answer]:
    """Answer every request, grouped by image so that each image is encoded once (worker thread)."""
    groups: dict[Any, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        groups[request.image_id or request.image].append(index)
    answers: list[Answer | None] = [None] * len(requests)
    for indices in groups.values():
        first = requests[indices[0]]
        batch = service.answer(_image_of(first), [requests[i] for i in indices], prepare=_arguments)
        for index, answer in zip(indices, batch, strict=True):
            answers[index] = answer
    return answers


def _arguments(encoding: Any, request: PredictRequest) -> dict[str, Any]:
    """Predictor arguments of a request; mask prompts decoded at the image's size."""
    arguments = {
        name: getattr(request, name) for name in _PREDICT_FIELDS if getattr(request, name) is not None
    }
    if request.masks:
        size = (encoding.image.height, encoding.image.width)
        arguments["masks"] = np.stack(
            [mask_from_wire(m, size, f"masks[{i}]") for i, m in enumerate(request.masks)]
        )
    return arguments


def _response(answer: Answer, request: PredictRequest, model_id: str) -> PredictResponse:
    prediction = answer.prediction
    instances = []
    phrases = set(prediction.phrases)
    for index, (mask, label, score) in enumerate(
        zip(prediction.masks, prediction.labels, prediction.scores, strict=True)
    ):
        mask = mask.numpy()
        instance = Instance(
            id=index,
            label=label,
            phrase=label if label in phrases else None,
            score=float(score),
            bbox=bounding_box(mask),
            area=int(mask.sum()),
        )
        if "rle" in request.outputs:
            instance.rle = rle_of(mask)
        if "polygons" in request.outputs:
            instance.polygons = mask_to_polygons(mask)
        if "png" in request.outputs:
            instance.png = mask_png_base64(mask)
        instances.append(instance)
    timing = Timing(encode_ms=answer.encode_ms, prompt_ms=answer.prompt_ms, cached=answer.cached)
    picture = png_base64(overlay(answer.image, prediction)) if "png" in request.outputs else None
    return PredictResponse(
        task=prediction.task,
        text=prediction.text,
        phrases=list(prediction.phrases),
        instances=instances,
        semantic=None if prediction.segmentation is None else id_map_png_base64(prediction.masks.numpy()),
        png=picture,
        timing=timing,
        model=model_id,
    )


def _conversation(body: ChatRequest) -> tuple[str, list[tuple[str, str]]]:
    """The last user message and the ``(question, answer)`` pairs before it."""
    messages = body.messages
    if messages[-1].role != "user":
        raise ApiError(422, "invalid_request", "the last message must be the user's")
    history, pending = [], None
    for message in messages[:-1]:
        if message.role == "user":
            if pending is not None:
                raise ApiError(422, "invalid_request", "user and assistant messages must alternate")
            pending = message.content
        elif pending is None:
            raise ApiError(422, "invalid_request", "an assistant message must follow a user message")
        else:
            history.append((pending, message.content))
            pending = None
    if pending is not None:
        raise ApiError(422, "invalid_request", "user and assistant messages must alternate")
    return messages[-1].content, history
