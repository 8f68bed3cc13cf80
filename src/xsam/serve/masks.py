"""Masks on the wire: COCO RLE in and out, PNG in and out (base64), polygons out (X-AnyLabeling,
``outputs=["polygons"]``), and Label Studio's brush RLE out.

Polygons trace the outer boundary of every 8-connected part of a mask through the centres of its
boundary pixels, clockwise in image coordinates, with the points of straight runs dropped (what
OpenCV's external contours with simple chains give). Filling such a polygon with its outline, as
annotation tools do, gives back the part; holes are filled and parts smaller than three points
(one or two pixels) are left out.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from ..processing import (
    ImageError,
    decode_rle,
    drop_collinear,
    encode_rle,
    load_image,
    png_bytes,
    trace_outline,
)


# ------------------------------------------------------------------------------------------- input
class WireError(ValueError):
    """A value in a request that cannot be decoded (the server answers 400 with its message)."""


def decode_image_string(text: str) -> bytes:
    """The bytes of a base64 image, plain or as a ``data:image/...;base64,`` URL.

    Raises:
        WireError: not base64.
    """
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise WireError("an image data URL must be base64-encoded (data:image/png;base64,...)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireError("the image is not valid base64 (plain, or a data:image/...;base64, URL)") from None


def mask_from_wire(value: Any, size_hw: tuple[int, int], name: str) -> np.ndarray:
    """One mask prompt as ``(H, W)`` bool: a COCO RLE object or a base64 PNG (nonzero = inside).

    Raises:
        WireError: neither, malformed, or not of the image's size (the message names ``name``).
    """
    try:
        if isinstance(value, Mapping):
            mask = decode_rle(value)
        elif isinstance(value, str):
            mask = np.asarray(load_image(decode_image_string(value)).convert("L")) > 0
        else:
            raise WireError("a mask is a COCO RLE object {size, counts} or a base64 PNG string")
    except (ValueError, ImageError) as error:
        raise WireError(f"{name}: {error}") from None
    if mask.shape != tuple(size_hw):
        raise WireError(f"{name} is {mask.shape[1]}x{mask.shape[0]}, the image {size_hw[1]}x{size_hw[0]}")
    return mask


# ------------------------------------------------------------------------------------------ output
def rle_of(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE (column-major, as pycocotools writes it)."""
    return encode_rle(mask)


def png_base64(image: Image.Image) -> str:
    """``image`` as a base64 PNG string."""
    return base64.b64encode(png_bytes(image)).decode("ascii")


def mask_png_base64(mask: np.ndarray) -> str:
    """A mask as a base64 single-channel PNG, 255 inside."""
    return png_base64(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255))


def id_map_png_base64(masks: np.ndarray) -> str:
    """Disjoint masks ``(N, H, W)`` as one base64 16-bit PNG: ``k + 1`` where mask ``k`` is, else 0."""
    if len(masks) >= 1 << 16:
        raise ValueError(f"an id map holds at most 65535 segments, got {len(masks)}")
    ids = np.zeros(masks.shape[1:], dtype=np.uint16)
    for index, mask in enumerate(masks):
        ids[np.asarray(mask, dtype=bool)] = index + 1
    return png_base64(Image.fromarray(ids))


def bounding_box(mask: np.ndarray) -> list[float]:
    """``[x, y, width, height]`` of a mask (COCO's bbox), zeros when empty."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return [0.0, 0.0, 0.0, 0.0]
    return [
        float(columns[0]),
        float(rows[0]),
        float(columns[-1] - columns[0] + 1),
        float(rows[-1] - rows[0] + 1),
    ]


def mask_to_polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """The outer boundaries of a mask's 8-connected parts as polygons ``[[x, y], ...]`` (see the
    module docstring), largest part first."""
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3)))
    polygons = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        part = labels[box] == index
        outline = trace_outline(part, divmod(int(np.flatnonzero(part)[0]), part.shape[1]))
        corners = drop_collinear(outline)
        corners = corners if len(corners) >= 3 else outline  # a one-pixel-wide line keeps its pixels
        if len(corners) >= 3:
            points = np.array(corners)[:, ::-1] + (box[1].start, box[0].start)
            polygons.append((int(part.sum()), points.astype(float).tolist()))
    return [points for _, points in sorted(polygons, key=lambda item: -item[0])]


def polygons_to_mask(polygons: list[list[list[float]]], size_hw: tuple[int, int]) -> np.ndarray:
    """Fill polygons with their outline, as annotation tools draw them (tests and clients)."""
    from PIL import ImageDraw

    canvas = Image.new("L", (size_hw[1], size_hw[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for points in polygons:
        draw.polygon([tuple(point) for point in points], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


# ------------------------------------------------------------------------------- Label Studio RLE
def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a mask: its own bit-packed run-length stream of the mask repeated
    to RGBA (each pixel four bytes, 255 inside), not COCO RLE.

    The stream: 32 bits holding the number of values (``H * W * 4``), 5 bits word size minus one
    (8-bit words), four 4-bit fields holding run-length bit sizes minus one (3, 4, 8 and 16 bits),
    then runs: a repeat flag bit, 2 bits choosing the run-length size, the run length minus one in
    that many bits, and either one word (a repeated run) or that many words (a literal run). Runs
    longer than 2**16 values are split. The last byte is padded with zero bits.
    """
    values = np.repeat(np.asarray(mask, dtype=bool).reshape(-1).astype(np.uint8) * 255, 4)
    writer = _BitWriter()
    writer.write(len(values), 32)
    writer.write(8 - 1, 5)
    sizes = (3, 4, 8, 16)
    for size in sizes:
        writer.write(size - 1, 4)
    changes = np.flatnonzero(np.diff(values)) + 1
    starts, ends = np.concatenate([[0], changes]), np.concatenate([changes, [len(values)]])
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        for chunk_start in range(start, end, 1 << 16):
            length = min(end, chunk_start + (1 << 16)) - chunk_start
            choice = next(i for i, size in enumerate(sizes) if length - 1 < (1 << size))
            writer.write(1, 1)  # a repeated run
            writer.write(choice, 2)
            writer.write(length - 1, sizes[choice])
            writer.write(int(values[start]), 8)
    return writer.bytes()


class _BitWriter:
    """Most-significant-bit-first bit packing into bytes."""

    def __init__(self) -> None:
        self._bits = io.StringIO()

    def write(self, value: int, width: int) -> None:
        self._bits.write(format(value, f"0{width}b"))

    def bytes(self) -> list[int]:
        bits = self._bits.getvalue()
        bits += "0" * (-len(bits) % 8)
        return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
