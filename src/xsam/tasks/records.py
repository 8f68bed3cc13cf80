"""Records: one annotated image of one task, whatever file format it was read from.

The readers of :mod:`xsam.data.formats` turn public datasets' files into :class:`Record` objects; the
task modules turn records into prompts and training targets, and into evaluation samples. Masks stay
lazy (:class:`Mask`: an RLE, polygons, or a callable) until a sample is built, so indexing a large
dataset costs little memory.

Coordinates are image pixels, ``(x, y)`` with ``x`` to the right and ``y`` down; masks are
``(H, W)`` bool arrays in the image frame.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..processing import decode_rle

Polygon = Sequence[float]  # flat [x0, y0, x1, y1, ...]


@dataclass(frozen=True)
class Mask:
    """A lazily decoded binary mask of an ``(height, width)`` image.

    Exactly one source is set: ``rle`` (COCO RLE dict, compressed or not), ``polygons`` (COCO
    polygons), or ``loader`` (a callable returning the array, e.g. one segment of a panoptic PNG).
    """

    height: int
    width: int
    rle: dict[str, Any] | None = None
    polygons: tuple[Polygon, ...] | None = None
    loader: Callable[[], np.ndarray] | None = None

    def __post_init__(self) -> None:
        sources = [self.rle is not None, self.polygons is not None, self.loader is not None]
        if sum(sources) != 1:
            raise ValueError("a Mask needs exactly one of rle=, polygons=, loader=")

    def decode(self) -> np.ndarray:
        """The mask as an ``(H, W)`` bool array."""
        if self.loader is not None:
            array = np.asarray(self.loader()).astype(bool)
        elif self.rle is not None:
            array = decode_rle({"size": [self.height, self.width], **self.rle})
        else:
            from pycocotools import mask as mask_utils

            polygons = mask_utils.frPyObjects([list(p) for p in self.polygons], self.height, self.width)
            array = mask_utils.decode(mask_utils.merge(polygons)).astype(bool)
        if array.shape != (self.height, self.width):
            raise ValueError(f"decoded mask is {array.shape}, expected {(self.height, self.width)}")
        return array

    @classmethod
    def from_array(cls, array: np.ndarray) -> Mask:
        array = np.asarray(array, dtype=bool)
        return cls(int(array.shape[0]), int(array.shape[1]), loader=lambda: array)


@dataclass
class Segment:
    """One annotated region: a mask with its category (generic, open-vocab, VGD, interactive)."""

    mask: Mask
    category: str
    category_id: int | None = None
    is_thing: bool = True
    iscrowd: bool = False
    visual_prompts: dict[str, Mask] = field(default_factory=dict)  # "point" | "scribble" | "box" | "mask"


@dataclass
class Expression:
    """A referring expression or reasoning query and the region(s) it denotes (union = target)."""

    text: str
    masks: list[Mask]
    is_sentence: bool = False
    explanation: str | None = None


@dataclass
class Phrase:
    """A grounded phrase of a caption: character span ``[start, end)`` and its mask(s)."""

    start: int
    end: int
    masks: list[Mask]


@dataclass
class Record:
    """One image with the annotations of one task.

    Only the fields of the record's task are filled: ``segments`` (+ ``categories``, the dataset's
    class list in id order with ``is_thing`` flags) for generic / open-vocabulary / VGD / interactive;
    ``expressions`` for referring and reasoning; ``caption`` + ``phrases`` for GCG;
    ``conversations`` (LLaVA turns ``{"from": "human"|"gpt", "value": str}``) for chat.
    ``ignore_mask`` marks pixels excluded from losses and metrics (ReasonSeg "ignore" polygons).
    ``height`` and ``width`` are 0 when the annotation does not state them (LLaVA); the image decides.
    """

    task: str
    image_path: Path | None
    height: int
    width: int
    image_id: int | str | None = None
    source: str = ""
    segments: list[Segment] = field(default_factory=list)
    categories: list[tuple[str, bool]] = field(default_factory=list)
    expressions: list[Expression] = field(default_factory=list)
    caption: str | None = None
    phrases: list[Phrase] = field(default_factory=list)
    conversations: list[dict[str, str]] = field(default_factory=list)
    ignore_mask: Mask | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def union_masks(masks: Sequence[Mask], height: int, width: int) -> np.ndarray:
    """Pixelwise OR of lazy masks: ``(H, W)`` bool (all False for an empty list)."""
    union = np.zeros((height, width), dtype=bool)
    for mask in masks:
        union |= mask.decode()
    return union
