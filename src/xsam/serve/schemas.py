"""The native API's request and response bodies (they are the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Point = Annotated[list[float], Field(min_length=2, max_length=2, description="x, y in image pixels")]
Box = Annotated[list[float], Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in image pixels")]
Output = Literal["rle", "polygons", "png"]
TaskName = Literal[
    "auto", "generic", "open_vocab", "referring", "reasoning", "gcg", "interactive", "vgd", "chat"
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageUpload(_Body):
    """An image as base64, plain or as a ``data:image/...;base64,`` URL."""

    image: str = Field(description="base64 image (or a data URL)")


class ImageInfo(BaseModel):
    image_id: str = Field(description="use it as image_id in /v1/predict and /v1/chat")
    width: int
    height: int
    cached: bool = Field(description="whether its encoding is kept (false: larger than the cache)")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class _ImageRef(_Body):
    image_id: str | None = Field(default=None, description="an id from POST /v1/images")
    image: str | None = Field(default=None, description="or the image itself: base64 or a data URL")

    @model_validator(mode="after")
    def _one_image(self) -> _ImageRef:
        if (self.image_id is None) == (self.image is None):
            raise ValueError("give exactly one of image_id and image")
        return self


class PredictRequest(_ImageRef):
    """One prompt about one image (the keyword arguments of ``XSamPredictor.predict``)."""

    task: TaskName = Field(default="auto", description="a task, or auto: chosen from the prompt")
    text: str | None = Field(default=None, max_length=20000, description="expression, query or message")
    categories: str | list[str] | None = Field(default=None, description="'ins: a, b; sem: c' or names")
    points: list[Point] | None = None
    boxes: list[Box] | None = None
    scribbles: list[Annotated[list[Point], Field(min_length=1)]] | None = None
    masks: list[dict[str, Any] | str] | None = Field(
        default=None, description="mask prompts: COCO RLE objects {size, counts} or base64 PNGs"
    )
    threshold: float | None = Field(default=None, ge=0, le=1)
    max_new_tokens: int = Field(default=512, ge=1, le=8192)
    is_sentence: bool | None = None
    outputs: list[Output] = Field(default_factory=lambda: ["rle"], description="what each instance carries")


class Instance(BaseModel):
    id: int
    label: str
    phrase: str | None = None
    score: float
    bbox: list[float] = Field(description="x, y, width, height")
    area: int
    rle: dict[str, Any] | None = Field(default=None, description="COCO RLE, column-major")
    polygons: list[list[list[float]]] | None = None
    png: str | None = Field(default=None, description="base64 PNG, 255 inside")


class Timing(BaseModel):
    encode_ms: float = Field(description="image encoding (0 when the cached one was used)")
    prompt_ms: float
    cached: bool


class PredictResponse(BaseModel):
    task: str
    text: str | None = None
    phrases: list[str] = Field(default_factory=list)
    instances: list[Instance]
    semantic: str | None = Field(
        default=None,
        description=(
            "generic tasks: the segment id map as a base64 16-bit PNG, pixel value k + 1 where "
            "instances[k] is, 0 where none is"
        ),
    )
    png: str | None = Field(default=None, description="the overlay, base64 PNG (outputs=['png'])")
    timing: Timing
    model: str


class ChatMessage(_Body):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=20000)


class ChatRequest(_ImageRef):
    """A conversation about an image, the whole history in the request; the last message is the user's."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_new_tokens: int = Field(default=512, ge=1, le=8192)


class ChatResponse(BaseModel):
    text: str
    timing: Timing
    model: str


class ModelInfo(BaseModel):
    id: str
    preset: str
    tasks: list[str]
    dtype: str
    device: str


class ModelList(BaseModel):
    models: list[ModelInfo]
