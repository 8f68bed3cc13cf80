"""Overlay drawing for predictions: each mask filled in a colour chosen to stand out from what lies
under it, outlined, and labelled inside itself (or beside it) with no label covering another; the
generated text underneath, GCG phrases marked in their masks' colours.

All drawing happens on the 8-bit image in place and touches only each mask's bounding box, band by
band of rows: memory is one copy of the image plus a few MB whatever the image size.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..tasks.prediction import Prediction

Colour = tuple[int, int, int]

CANDIDATES: tuple[Colour, ...] = (
    (232, 30, 40),  # red
    (30, 110, 235),  # blue
    (255, 215, 0),  # yellow
    (40, 175, 70),  # green
    (235, 45, 210),  # magenta
    (0, 210, 215),  # cyan
    (255, 125, 0),  # orange
    (120, 55, 225),  # violet
    (150, 225, 20),  # lime
    (255, 140, 180),  # pink
    (0, 115, 120),  # teal
    (145, 85, 35),  # brown
    (35, 35, 130),  # navy
)
"""The colours masks are drawn in: well apart from each other in hue and lightness."""

_BAND_PIXELS = 1 << 19
"""Per-mask work runs over bands of rows holding about this many pixels, so its scratch memory stays
small whatever the image size."""

_SAMPLES = 4096
"""Pixels sampled under each mask to judge its colours (and its centre)."""

_ENOUGH_CONTRAST = 100.0
"""CIELAB distance past which more contrast counts for nothing (an object and its neighbours are
clearly apart from the colour already)."""

_REUSE_COST = 20.0
"""What each earlier use of a candidate costs it, in CIELAB distance: near-ties go to unused colours,
so masks far apart still tend to differ."""

_PLACEMENT_CELLS = 256
"""Label placement inside a mask works on a grid of at most this many cells a side over its box."""


@dataclass(frozen=True)
class LabelBox:
    """One mask's label as drawn: ``box`` is ``(x0, y0, x1, y1)`` in image pixels (end exclusive),
    ``inside`` whether the box lies wholly within the mask (else it sits beside it)."""

    mask: int
    text: str
    box: tuple[int, int, int, int]
    inside: bool


@dataclass(frozen=True)
class _Style:
    """Sizes that scale with the image: the font, padding around text, outline thickness."""

    font: Any
    pad: int
    thickness: int
    top: int  # the font's top bearing: text drawn at y has its tallest glyphs start at y + top
    line: int  # height of one line of text, tallest glyph top to lowest descender


# ------------------------------------------------------------------------------------ public API
def mask_colours(image: Image.Image, prediction: Prediction) -> list[Colour]:
    """One ``(r, g, b)`` colour per mask, the ones :func:`overlay` draws, so other views (a results
    table, GCG phrase highlights) can match it. Each mask in order gets, from :data:`CANDIDATES`, a
    colour far (in CIELAB) from the image colours under it and from the colours of the masks around
    it; deterministic for the same image and prediction."""
    base = _pixels(image)
    masks = _masks(prediction, base.shape[:2])
    return _assign_colours(base, masks, _all_bounds(masks))


def label_boxes(prediction: Prediction, *, scores: bool = True) -> list[LabelBox]:
    """Where :func:`overlay` writes each mask's label, in mask order; empty masks have none, nor has a
    mask when the image is too small for a label or no free place is left."""
    masks = _masks(prediction, prediction.image_size)
    style = _style(*prediction.image_size)
    return _place_labels(masks, _all_bounds(masks), _label_texts(prediction, scores), style)


def overlay(
    image: Image.Image,
    prediction: Prediction,
    *,
    alpha: float = 0.5,
    scores: bool = True,
    labels: bool = True,
    caption: bool = True,
) -> Image.Image:
    """Draw ``prediction`` over ``image`` (its masks' size): each mask blended in its colour (``alpha``
    the colour's weight), outlined, labelled ``label`` or ``label 0.93`` (``scores``); the generated
    text (GCG, chat) below the image when ``caption``. Returns a new RGB image."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = _pixels(image)
    masks = _masks(prediction, base.shape[:2])
    bounds = _all_bounds(masks)
    colours = _assign_colours(base, masks, bounds)
    style = _style(*base.shape[:2])
    weight = round(alpha * 256)  # alpha in 1/256 steps, integer arithmetic (0.5 is exact)
    for mask, box, colour in zip(masks, bounds, colours, strict=True):
        if box is not None:
            _fill(base, mask, box, colour, weight)
    for mask, box, colour in zip(masks, bounds, colours, strict=True):
        if box is not None:
            _outline(base, mask, box, _edge_colour(colour), style.thickness)
    result = Image.fromarray(base)
    if labels:
        placed = _place_labels(masks, bounds, _label_texts(prediction, scores), style)
        _draw_labels(ImageDraw.Draw(result), placed, colours, style)
    if caption and prediction.text:
        result = _with_caption(result, prediction.text, _phrase_spans(prediction, colours), style)
    return result


def contact_sheet(
    panels: Sequence[tuple[str, Image.Image]], *, columns: int = 4, width: int = 256
) -> Image.Image:
    """Tile titled panels (each scaled to ``width`` pixels wide) in rows of ``columns``; the sheet is
    ``width * columns`` wide (fewer columns when fewer panels). Titles too long for a panel end in an
    ellipsis."""
    if not panels:
        raise ValueError("contact_sheet needs at least one panel")
    style = _style(width, width, scale=1 / 18)
    title_height = style.line + 3 * style.pad  # a little more room above the title than below
    scaled = [
        (title, image.convert("RGB").resize((width, max(1, round(image.height * width / image.width)))))
        for title, image in panels
    ]
    rows = [scaled[i : i + columns] for i in range(0, len(scaled), columns)]
    heights = [title_height + max(image.height for _, image in row) for row in rows]
    sheet = Image.new("RGB", (width * min(columns, len(scaled)), sum(heights)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    top = 0
    for row, height in zip(rows, heights, strict=True):
        for column, (title, image) in enumerate(row):
            text = _fit(title, style.font, width - 2 * style.pad)
            position = (column * width + style.pad, top + 2 * style.pad - style.top)
            draw.text(position, text, fill=(20, 20, 20), font=style.font)
            sheet.paste(image, (column * width, top + title_height))
        top += height
    return sheet


# ---------------------------------------------------------------------------------------- inputs
def _pixels(image: Image.Image) -> np.ndarray:
    """A fresh ``(H, W, 3)`` uint8 copy of ``image`` in RGB, converted band by band: no second full
    copy (``np.array(image)`` makes one through ``tobytes``) exists at any time."""
    base = np.empty((image.height, image.width, 3), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(image.width, 1))
    for top in range(0, image.height, rows):
        band = image.crop((0, top, image.width, min(top + rows, image.height))).convert("RGB")
        base[top : top + band.height] = np.asarray(band)
    return base


def _masks(prediction: Prediction, size: tuple[int, int]) -> np.ndarray:
    """The masks as ``(N, H, W)`` bool numpy (no copy for CPU bool tensors), checked against ``size``."""
    if tuple(prediction.masks.shape[1:]) != tuple(size):
        raise ValueError(f"masks are {tuple(prediction.masks.shape[1:])} but the image is {tuple(size)}")
    return prediction.masks.detach().cpu().bool().numpy()


def _all_bounds(masks: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """``(y0, y1, x0, x1)`` (ends exclusive) of each mask's bounding box, None for an empty mask."""
    rows, columns = masks.any(axis=2), masks.any(axis=1)
    bounds = []
    for row, column in zip(rows, columns, strict=True):
        ys, xs = np.flatnonzero(row), np.flatnonzero(column)
        bounds.append(None if ys.size == 0 else (int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1))
    return bounds


def _label_texts(prediction: Prediction, scores: bool) -> list[str]:
    if not scores:
        return list(prediction.labels)
    return [f"{label} {score:.2f}" for label, score in zip(prediction.labels, prediction.scores, strict=True)]


@functools.lru_cache(maxsize=32)
def _font(size: int) -> Any:
    """Pillow's bundled scalable font at ``size`` px; its fixed bitmap font when FreeType (or Pillow
    10.1's ``size``) is missing."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _style(height: int, width: int, *, scale: float = 0.024) -> _Style:
    """Text about ``scale`` of the image's mean side (12 px at least); outlines 1-3 px."""
    size = max(12, round(scale * (height * width) ** 0.5))
    font = _font(size)
    _, top, _, bottom = font.getbbox("Hgjy|")
    thickness = int(np.clip(round(min(height, width) / 400), 1, 3))
    return _Style(font, max(2, size // 4), thickness, top, bottom - top)


# --------------------------------------------------------------------------------------- colours
_RGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def _linear(rgb: Any) -> np.ndarray:
    """Linear-light values in 0-1 of sRGB values in 0-255 (any shape), float64."""
    channel = np.asarray(rgb, dtype=np.float64) / 255.0
    return np.where(channel <= 0.04045, channel / 12.92, ((channel + 0.055) / 1.055) ** 2.4)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of ``(..., 3)`` sRGB values in 0-255, float64."""
    xyz = _linear(rgb) @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _samples(base: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """About :data:`_SAMPLES` ``(k, 3)`` image colours under the mask, on a regular grid over its box."""
    y0, y1, x0, x1 = box
    step = max(1, int(((y1 - y0) * (x1 - x0) / _SAMPLES) ** 0.5))
    picked = base[y0:y1:step, x0:x1:step][mask[y0:y1:step, x0:x1:step]]
    if len(picked) == 0:  # a thin mask the grid misses: take its pixels themselves
        picked = base[y0:y1, x0:x1][mask[y0:y1, x0:x1]][:: max(1, int(mask[y0:y1, x0:x1].sum()) // _SAMPLES)]
    return picked


def _neighbours(bounds: list, index: int, margin: int) -> list[int]:
    """Earlier masks whose boxes, grown by ``margin``, meet mask ``index``'s box."""
    box = bounds[index]
    if box is None:
        return []
    found = []
    for other in range(index):
        near = bounds[other]
        if near is None:
            continue
        rows_meet = near[0] < box[1] + margin and box[0] < near[1] + margin
        if rows_meet and near[2] < box[3] + margin and box[2] < near[3] + margin:
            found.append(other)
    return found


def _assign_colours(base: np.ndarray, masks: np.ndarray, bounds: list) -> list[Colour]:
    """Greedy, in mask order: the candidate whose smaller distance to the object (a low percentile of
    its distances to the colours under the mask) and to neighbouring masks' colours is largest, capped
    at :data:`_ENOUGH_CONTRAST`, less :data:`_REUSE_COST` per earlier use; ties go to the earlier
    candidate."""
    candidates = _lab(np.array(CANDIDATES))
    margin = max(4, max(base.shape[:2]) // 50)
    chosen: list[int] = []
    uses = np.zeros(len(CANDIDATES))
    for index, (mask, box) in enumerate(zip(masks, bounds, strict=True)):
        apart = np.full(len(CANDIDATES), np.inf)
        if box is not None:
            under = _lab(_samples(base, mask, box))
            distances = np.linalg.norm(candidates[:, None] - under[None], axis=-1)
            apart = np.percentile(distances, 20, axis=1)
        for other in _neighbours(bounds, index, margin):
            apart = np.minimum(apart, np.linalg.norm(candidates - candidates[chosen[other]], axis=-1))
        score = np.minimum(apart, _ENOUGH_CONTRAST) - _REUSE_COST * uses
        chosen.append(int(np.argmax(score)))
        uses[chosen[-1]] += 1
    return [CANDIDATES[i] for i in chosen]


def _luminance(colour: Colour) -> float:
    """WCAG relative luminance, 0 (black) to 1 (white)."""
    return float(_linear(colour) @ _RGB_TO_XYZ[1])


def _text_colour(background: Colour) -> Colour:
    """Black or white, whichever contrasts more with ``background`` (WCAG contrast ratio)."""
    return (0, 0, 0) if _luminance(background) > 0.179 else (255, 255, 255)


def _edge_colour(colour: Colour) -> Colour:
    """The outline's colour: the fill's, darkened when light (lightened when dark) so it reads crisp."""
    target = 0 if _luminance(colour) > 0.179 else 255
    return tuple(round(c + (target - c) * 0.35) for c in colour)  # type: ignore[return-value]


# --------------------------------------------------------------------------------- fills, outlines
def _bands(box: tuple[int, int, int, int]) -> range:
    """Tops of the row bands covering ``box``, each about :data:`_BAND_PIXELS` pixels."""
    y0, y1, x0, x1 = box
    return range(y0, y1, max(1, _BAND_PIXELS // (x1 - x0)))


def _fill(base: np.ndarray, mask: np.ndarray, box: tuple, colour: Colour, weight: int) -> None:
    """Blend ``colour`` (weight ``weight``/256) over the masked pixels, in place, 16-bit integers."""
    _, y1, x0, x1 = box
    tint = np.asarray(colour, dtype=np.uint16) * np.uint16(weight)
    rows = _bands(box).step
    for top in _bands(box):
        band, inside = base[top : min(top + rows, y1), x0:x1], mask[top : min(top + rows, y1), x0:x1]
        # the whole band blended, then copied where the mask is: cheaper in time and memory than
        # boolean indexing, which builds 16 bytes of indices per masked pixel
        values = band.astype(np.uint16)
        values *= np.uint16(256 - weight)
        values += tint
        values >>= 8
        np.copyto(band, values, casting="unsafe", where=inside[..., None])


def _outline(base: np.ndarray, mask: np.ndarray, box: tuple, colour: Colour, thickness: int) -> None:
    """Paint the mask's pixels within ``thickness`` (4-connected steps) of its boundary, in place. The
    image's border does not count as the mask's boundary."""
    _, y1, x0, x1 = box
    rows = _bands(box).step
    for top in _bands(box):
        bottom = min(top + rows, y1)
        edge = _edge(mask, (top, bottom, x0, x1), thickness)
        base[top:bottom, x0:x1][edge] = colour


def _edge(mask: np.ndarray, window: tuple[int, int, int, int], thickness: int) -> np.ndarray:
    """The boundary pixels of ``mask[y0:y1, x0:x1]``: the mask minus its erosion by ``thickness``."""
    y0, y1, x0, x1 = window
    height, width = mask.shape
    top, bottom = max(0, y0 - thickness), min(height, y1 + thickness)
    left, right = max(0, x0 - thickness), min(width, x1 + thickness)
    padding = (
        (thickness - (y0 - top), thickness - (bottom - y1)),
        (thickness - (x0 - left), thickness - (right - x1)),
    )
    eroded = np.pad(mask[top:bottom, left:right], padding, mode="edge")
    for _ in range(thickness):
        eroded = (
            eroded[1:-1, 1:-1] & eroded[:-2, 1:-1] & eroded[2:, 1:-1] & eroded[1:-1, :-2] & eroded[1:-1, 2:]
        )
    return mask[y0:y1, x0:x1] & ~eroded


# ---------------------------------------------------------------------------------------- labels
def _drawable(text: str, font: Any) -> str:
    """``text`` as ``font`` can draw it: Pillow's bitmap fallback font knows Latin-1 only (it raises on
    anything else), so other characters become ``?`` there."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.replace("…", "...").encode("latin-1", "replace").decode("latin-1")


def _fit(text: str, font: Any, width: float) -> str:
    """``text``, cut and ended with an ellipsis when wider than ``width`` pixels."""
    text, ellipsis = _drawable(text, font), _drawable("…", font)
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + ellipsis) > width:
        text = text[:-1]
    return text.rstrip() + ellipsis if text else ""


def _centre(mask: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float, float]:
    """``(x, y)`` of the mask's centroid, from a grid of samples over its box."""
    y0, y1, x0, x1 = box
    step = max(1, int(((y1 - y0) * (x1 - x0) / _SAMPLES) ** 0.5))
    ys, xs = np.nonzero(mask[y0:y1:step, x0:x1:step])
    if len(ys) == 0:
        return (x0 + x1) / 2, (y0 + y1) / 2
    return x0 + float(xs.mean()) * step, y0 + float(ys.mean()) * step


def _solid_cells(crop: np.ndarray, step: int) -> np.ndarray:
    """``(h // step, w // step)`` bool: which ``step``-pixel cells of ``crop`` lie wholly in the mask."""
    rows, columns = crop.shape[0] // step, crop.shape[1] // step
    across = crop[0 : rows * step : step].copy()
    for offset in range(1, step):
        across &= crop[offset : rows * step : step]
    cells = across[:, 0 : columns * step : step].copy()
    for offset in range(1, step):
        cells &= across[:, offset : columns * step : step]
    return cells


def _inside_spots(mask: np.ndarray, box: tuple, size: tuple[int, int], margins: Sequence[int]) -> np.ndarray:
    """``(k, 2)`` top-left ``(x, y)`` of places where a ``size`` label plus a margin lies wholly in the
    mask: for each of ``margins`` in turn, up to 64 places nearest the mask's centroid first. Found on
    a coarse cell grid with an integral image (a cell counts only when all its pixels are in the mask)."""
    y0, y1, x0, x1 = box
    step = max(1, -(-max(y1 - y0, x1 - x0) // _PLACEMENT_CELLS))
    integral = np.zeros(((y1 - y0) // step + 1, (x1 - x0) // step + 1), dtype=np.int32)
    integral[1:, 1:] = _solid_cells(mask[y0:y1, x0:x1], step).cumsum(0).cumsum(1)
    centre = _centre(mask, box)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for margin in margins:
        span_y, span_x = -(-(size[1] + 2 * margin) // step), -(-(size[0] + 2 * margin) // step)
        if span_y >= integral.shape[0] or span_x >= integral.shape[1]:
            continue
        sums = integral[span_y:, span_x:] - integral[:-span_y, span_x:] - integral[span_y:, :-span_x]
        ys, xs = np.nonzero(sums + integral[:-span_y, :-span_x] == span_y * span_x)
        left = x0 + xs * step + (span_x * step - size[0]) // 2
        top = y0 + ys * step + (span_y * step - size[1]) // 2
        distance = (left + size[0] / 2 - centre[0]) ** 2 + (top + size[1] / 2 - centre[1]) ** 2
        nearest = np.argsort(distance, kind="stable")[:64]
        found.append(np.stack([left[nearest], top[nearest]], axis=1).astype(np.int64))
    return np.concatenate(found)


def _outside_spots(box: tuple, size: tuple[int, int], image: tuple[int, int], gap: int) -> np.ndarray:
    """``(k, 2)`` top-left places beside the mask's box (above, below, right, left), then a grid over
    the whole image nearest the box first; all clamped into the image."""
    y0, y1, x0, x1 = box
    width, height = size
    cx, cy = (x0 + x1 - width) // 2, (y0 + y1 - height) // 2
    beside = [(cx, y0 - height - gap), (cx, y1 + gap), (x1 + gap, cy), (x0 - width - gap, cy)]
    step_y, step_x = max(1, height // 2, image[0] // 64), max(1, width // 4, image[1] // 64)
    grid_y, grid_x = np.meshgrid(
        np.arange(0, image[0], step_y), np.arange(0, image[1], step_x), indexing="ij"
    )
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    order = np.argsort((grid[:, 0] - cx) ** 2 + (grid[:, 1] - cy) ** 2, kind="stable")
    spots = np.concatenate([np.array(beside), grid[order]])
    spots[:, 0] = np.clip(spots[:, 0], 0, image[1] - width)
    spots[:, 1] = np.clip(spots[:, 1], 0, image[0] - height)
    return spots


def _free(spots: np.ndarray, size: tuple[int, int], placed: list, gap: int) -> np.ndarray:
    """Which ``spots`` (top-left) keep a ``size`` box ``gap`` pixels clear of every placed box."""
    if not placed:
        return np.ones(len(spots), dtype=bool)
    boxes = np.array([label.box for label in placed])
    x, y = spots[:, :1], spots[:, 1:]
    apart = (x + size[0] + gap <= boxes[:, 0]) | (boxes[:, 2] + gap <= x)
    apart |= (y + size[1] + gap <= boxes[:, 1]) | (boxes[:, 3] + gap <= y)
    return apart.all(axis=1)


def _place_labels(masks: np.ndarray, bounds: list, texts: list[str], style: _Style) -> list[LabelBox]:
    """Each non-empty mask's label at the first free spot: inside the mask near its centre, else beside
    it, else anywhere free in the image; a label with no free spot is left out. Smaller masks choose
    first (big ones have room to spare); the result is in mask order."""
    placed: list[LabelBox] = []
    order = sorted(
        (index for index, box in enumerate(bounds) if box is not None),
        key=lambda index: (
            (bounds[index][1] - bounds[index][0]) * (bounds[index][3] - bounds[index][2]),
            index,
        ),
    )
    for index in order:
        label = _place_label(index, masks[index], bounds[index], texts[index], style, placed)
        if label is not None:
            placed.append(label)
    return sorted(placed, key=lambda label: label.mask)


def _place_label(
    index: int, mask: np.ndarray, box: tuple, text: str, style: _Style, placed: list[LabelBox]
) -> LabelBox | None:
    """Mask ``index``'s label at its first free spot (see :func:`_place_labels`), or None."""
    image = mask.shape
    gap = max(1, style.pad // 2)
    text = _fit(text, style.font, image[1] - 2 * style.pad)
    size = (int(np.ceil(style.font.getlength(text))) + 2 * style.pad, style.line + 2 * style.pad)
    if not text or size[0] > image[1] or size[1] > image[0]:
        return None
    inside = _inside_spots(mask, box, size, (style.thickness + gap, 0))
    spots = np.concatenate([inside, _outside_spots(box, size, image, gap)])
    free = np.flatnonzero(_free(spots, size, placed, gap))
    if not free.size:
        return None
    x, y = (int(v) for v in spots[free[0]])
    return LabelBox(index, text, (x, y, x + size[0], y + size[1]), bool(free[0] < len(inside)))


def _draw_labels(
    draw: ImageDraw.ImageDraw, placed: list[LabelBox], colours: list[Colour], style: _Style
) -> None:
    for label in placed:
        colour = colours[label.mask]
        x0, y0, x1, y1 = label.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour, outline=_edge_colour(colour))
        position = (x0 + style.pad, y0 + style.pad - style.top)
        draw.text(position, label.text, fill=_text_colour(colour), font=style.font)


# --------------------------------------------------------------------------------------- caption
def _phrase_spans(prediction: Prediction, colours: list[Colour]) -> list[tuple[int, int, Colour]]:
    """``(start, end, colour)`` of each grounded phrase in ``prediction.text`` whose mask is known
    (GCG labels its masks with the phrases, in order), found left to right."""
    spans, position = [], 0
    text = prediction.text or ""
    for index, phrase in enumerate(prediction.phrases):
        if index >= len(colours) or prediction.labels[index] != phrase or not phrase:
            continue
        start = text.find(phrase, position)
        if start >= 0:
            spans.append((start, start + len(phrase), colours[index]))
            position = start + len(phrase)
    return spans


def _caption_lines(text: str, spans: list, style: _Style, width: int) -> list[list[tuple[str, Any, float]]]:
    """Words of ``text`` wrapped greedily to ``width`` pixels: lines of ``(word, colour or None, x)``;
    at most 12 lines, the last ending in an ellipsis when text is cut."""
    space = style.font.getlength(" ")
    lines: list[list[tuple[str, Any, float]]] = [[]]
    x = style.pad
    for word in re.finditer(r"\S+", text):
        colour = next((c for start, end, c in spans if start <= word.start() < end), None)
        drawn = _drawable(word.group(), style.font)
        length = style.font.getlength(drawn)
        if lines[-1] and x + length > width - style.pad:
            lines.append([])
            x = style.pad
        lines[-1].append((drawn, colour, x))
        x += length + space
    if len(lines) > 12:
        lines = lines[:12]
        word, colour, x = lines[-1][-1]
        lines[-1][-1] = (word + _drawable(" …", style.font), colour, x)
    return lines


def _with_caption(image: Image.Image, text: str, spans: list, style: _Style) -> Image.Image:
    """``image`` over a white strip holding ``text``; phrase words on their masks' colours."""
    lines = _caption_lines(text, spans, style, image.width)
    step = style.line + style.pad
    canvas = Image.new("RGB", (image.width, image.height + step * len(lines) + style.pad), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    space = style.font.getlength(" ")
    for row, line in enumerate(lines):
        top = image.height + style.pad + row * step
        for position, (word, colour, x) in enumerate(line):
            ink = (20, 20, 20)
            if colour is not None:
                joined = position + 1 < len(line) and line[position + 1][1] == colour
                right = x + style.font.getlength(word) + (space if joined else 0)
                draw.rectangle((x - 1, top - 1, right, top + style.line + 1), fill=colour)
                ink = _text_colour(colour)
            draw.text((x, top - style.top), word, fill=ink, font=style.font)
    return canvas
