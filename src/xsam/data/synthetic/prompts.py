"""Visual prompts drawn on one instance mask: a clicked point, a scribble, a box and a rough mask.

The point and scribble are stored thin, as COCO-Interactive stores them (one pixel, a 1-px stroke);
:func:`dilated` widens them the way COCO-VGD stores them (disks of radius 10 and 5 px). Every prompt is
non-empty and drawn from the generator it is given. Masks are ``(H, W)`` bool, row ``y`` down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..formats.visual_prompts import dilate_disk
from .geometry import box_blur, erode_disk, mask_bbox, mask_centroid

POINT_RADIUS = 10
SCRIBBLE_RADIUS = 5
PROMPT_KINDS = ("point", "scribble", "box", "mask")


@dataclass(frozen=True, eq=False)
class VisualPrompts:
    """The four ``(H, W)`` bool prompts of one instance (point and scribble undilated)."""

    point: np.ndarray = field(repr=False)
    scribble: np.ndarray = field(repr=False)
    box: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {kind: getattr(self, kind) for kind in PROMPT_KINDS}

    def dilated(self) -> dict[str, np.ndarray]:
        """The prompts as COCO-VGD stores them: point and scribble widened to disks."""
        return {
            "point": dilate_disk(self.point, POINT_RADIUS),
            "scribble": dilate_disk(self.scribble, SCRIBBLE_RADIUS),
            "box": self.box,
            "mask": self.mask,
        }


def draw_prompts(rng: np.random.Generator, mask: np.ndarray) -> VisualPrompts:
    """All four prompts of a non-empty instance ``mask``.

    * point: the inner pixel nearest a spot drawn around the centroid (inner = at least 2 px from the
      edge when the mask has such pixels);
    * scribble: a gently wavy stroke across the mask along a random direction, kept to the mask's pixels;
    * box: the mask's bounding box with each side moved by up to 5 % of the box size, filled;
    * mask: the mask blurred and thresholded, which rounds its corners.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("cannot draw prompts on an empty mask")
    inner = erode_disk(mask, 2)
    inner = inner if inner.any() else mask
    point = _point(rng, mask, inner)
    scribble = _scribble(rng, mask, inner)
    return VisualPrompts(point, scribble if scribble.any() else point, _box(rng, mask), _rough_mask(mask))


def _point(rng: np.random.Generator, mask: np.ndarray, inner: np.ndarray) -> np.ndarray:
    centre_x, centre_y = mask_centroid(mask)
    spread = 0.15 * math.sqrt(mask.sum())
    aim_x, aim_y = centre_x + rng.normal(0, spread), centre_y + rng.normal(0, spread)
    rows, cols = np.nonzero(inner)
    nearest = int(np.argmin((cols - aim_x) ** 2 + (rows - aim_y) ** 2))
    point = np.zeros_like(mask)
    point[rows[nearest], cols[nearest]] = True
    return point


def _scribble(rng: np.random.Generator, mask: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """From near one end of the mask to near the other along a random direction, with a sine wobble."""
    rows, cols = np.nonzero(inner)
    angle = rng.uniform(0, math.pi)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    low, high = np.quantile(along, [0.1, 0.9])
    start = int(np.argmin(np.abs(along - low)))
    end = int(np.argmin(np.abs(along - high)))
    (start_row, start_col), (end_row, end_col) = (rows[start], cols[start]), (rows[end], cols[end])
    length = math.hypot(end_row - start_row, end_col - start_col)
    t = np.linspace(0.0, 1.0, max(2, 2 * math.ceil(length) + 1))  # half-pixel steps: no gaps
    wobble = 0.08 * length * np.sin(2 * math.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * math.pi))
    normal_row, normal_col = (end_col - start_col) / max(length, 1), -(end_row - start_row) / max(length, 1)
    stroke_rows = np.rint(start_row + t * (end_row - start_row) + wobble * normal_row).astype(int)
    stroke_cols = np.rint(start_col + t * (end_col - start_col) + wobble * normal_col).astype(int)
    height, width = mask.shape
    keep = (stroke_rows >= 0) & (stroke_rows < height) & (stroke_cols >= 0) & (stroke_cols < width)
    scribble = np.zeros_like(mask)
    scribble[stroke_rows[keep], stroke_cols[keep]] = True
    return scribble & mask


def _box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    left, top, width, height = mask_bbox(mask)
    jitter = rng.uniform(-0.05, 0.05, 4) * np.array([width, height, width, height])
    image_height, image_width = mask.shape
    x0 = int(np.clip(round(left + jitter[0]), 0, image_width - 1))
    y0 = int(np.clip(round(top + jitter[1]), 0, image_height - 1))
    x1 = int(np.clip(round(left + width + jitter[2]), x0 + 1, image_width))
    y1 = int(np.clip(round(top + height + jitter[3]), y0 + 1, image_height))
    box = np.zeros_like(mask)
    box[y0:y1, x0:x1] = True
    return box


def _rough_mask(mask: np.ndarray) -> np.ndarray:
    rough = box_blur(mask, 2) > 0.5
    return rough if rough.any() else mask
