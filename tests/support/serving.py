"""Helpers of the server tests and benchmark: the bundled example image, PNG and base64 encoding."""

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xsam

EXAMPLE_IMAGE = Path(xsam.__file__).parent / "assets/examples/002201.jpg"
"""A 256 x 256 synthetic scene of the bundled examples (a large red hexagon at about (78, 115))."""


def png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def base64_of(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_brush(rle: list[int]) -> np.ndarray:
    """Label Studio's brush RLE decoded from the format's description (header, then runs), as the
    RGBA byte stream it encodes."""
    bits = "".join(format(byte, "08b") for byte in rle)
    position = 0

    def read(width: int) -> int:
        nonlocal position
        value = int(bits[position : position + width], 2)
        position += width
        return value

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    values: list[int] = []
    while len(values) < count:
        repeated, size = read(1), sizes[read(2)]
        length = read(size) + 1
        values += [read(word)] * length if repeated else [read(word) for _ in range(length)]
    return np.array(values, dtype=np.uint8)


def label_studio_decoder():
    """``label_studio_sdk.converter.brush``, Label Studio's own brush-RLE codec; the test skips without
    it, except in CI (``XSAM_CI=1``), which installs it (``pip install --no-deps label-studio-sdk``)."""
    if os.environ.get("XSAM_CI"):
        from label_studio_sdk.converter import brush

        return brush
    return pytest.importorskip(
        "label_studio_sdk.converter.brush",
        reason="Label Studio's own decoder cross-check: pip install --no-deps label-studio-sdk==2.1.2",
    )
