"""Overlay drawing for predictions: coloured masks, labels at mask centres, text underneath."""

from __future__ import annotations

import colorsys
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..tasks.prediction import Prediction


def palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` well-separated bright colours (golden-ratio hue steps), deterministic."""
    colours = []
    for i in range(count):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


_BAND_PIXELS = 1 << 22
"""Blending runs over bands of rows holding about this many pixels, so its scratch memory stays small
whatever the image size."""


def overlay(image: Image.Image, prediction: Prediction, *, alpha: float = 0.5) -> Image.Image:
    """Blend each mask in its colour over ``image``, write its label, and append generated text.

    Works on the 8-bit image in place, band by band: memory is one copy of the image plus a few MB.
    """
    base = np.array(image.convert("RGB"), dtype=np.uint8)
    if tuple(prediction.masks.shape[1:]) != base.shape[:2]:
        raise ValueError(f"masks are {tuple(prediction.masks.shape[1:])} but the image is {base.shape[:2]}")
    colours = palette(len(prediction.masks))
    weight = round(alpha * 256)  # alpha in 1/256 steps, integer arithmetic (0.5 is exact)
    rows = max(1, _BAND_PIXELS // max(base.shape[1], 1))
    for mask, colour in zip(prediction.masks, colours, strict=True):
        mask = mask.cpu().numpy()
        tint = np.asarray(colour, dtype=np.uint32) * weight
        for top in range(0, base.shape[0], rows):
            band, inside = base[top : top + rows], mask[top : top + rows]
            band[inside] = ((band[inside].astype(np.uint32) * (256 - weight) + tint) >> 8).astype(np.uint8)
    result = Image.fromarray(base)
    draw = ImageDraw.Draw(result)
    font = ImageFont.load_default()
    for mask, colour, label, score in zip(
        prediction.masks, colours, prediction.labels, prediction.scores, strict=True
    ):
        position = _centre(mask.cpu().numpy())
        if position is None:
            continue
        caption = f"{label} {score:.2f}"
        box = draw.textbbox(position, caption, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text(position, caption, fill=colour, font=font)
    if prediction.text:
        result = _with_caption(result, prediction.text, font)
    return result


def _centre(mask: np.ndarray) -> tuple[int, int] | None:
    """``(x, y)`` of a mask's centroid (truncated), from its row and column counts; None when empty."""
    area = int(mask.sum())
    if area == 0:
        return None
    columns = int((np.arange(mask.shape[1]) * mask.sum(axis=0)).sum())
    rows = int((np.arange(mask.shape[0]) * mask.sum(axis=1)).sum())
    return int(columns / area), int(rows / area)


def _with_caption(image: Image.Image, text: str, font: ImageFont.ImageFont) -> Image.Image:
    width = max(20, image.width // 7)
    lines = textwrap.wrap(text, width=width)[:12]
    line_height = 14
    canvas = Image.new("RGB", (image.width, image.height + line_height * len(lines) + 8), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, image.height + 4 + i * line_height), line, fill=(0, 0, 0), font=font)
    return canvas


def contact_sheet(
    panels: Sequence[tuple[str, Image.Image]], *, columns: int = 4, width: int = 256
) -> Image.Image:
    """Tile titled panels (each scaled to ``width`` pixels wide) in rows of ``columns``."""
    if not panels:
        raise ValueError("contact_sheet needs at least one panel")
    font = ImageFont.load_default()
    title_height = 16
    scaled = [
        (title, image.convert("RGB").resize((width, max(1, round(image.height * width / image.width)))))
        for title, image in panels
    ]
    rows = [scaled[i : i + columns] for i in range(0, len(scaled), columns)]
    row_heights = [title_height + max(image.height for _, image in row) for row in rows]
    sheet = Image.new("RGB", (width * min(columns, len(scaled)), sum(row_heights)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    top = 0
    for row, height in zip(rows, row_heights, strict=True):
        for column, (title, image) in enumerate(row):
            draw.text((column * width + 4, top + 2), title, fill=(0, 0, 0), font=font)
            sheet.paste(image, (column * width, top + title_height))
        top += height
    return sheet
