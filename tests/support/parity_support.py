"""Shared helpers of the parity suites: fixture discovery, loading, photos, and diff bookkeeping.

The fixture directory is ``XSAM_PARITY_DIR`` (default ``<repo>/../shared/parity``); every suite skips
with a clear reason when it is absent, and runs unchanged on any directory of the same layout.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from locations import PARITY_DIR

AVAILABLE = (PARITY_DIR / "component_configs.json").is_file()
SKIP_REASON = f"parity fixtures not found in {PARITY_DIR} (set XSAM_PARITY_DIR)"

# name -> max abs diff seen, filled by ``assert_close`` and dumped by ``scripts/parity_report.py``.
DIFFS: dict[str, float] = {}
SCALES: dict[str, float] = {}  # max |reference| of each compared tensor


def fixture_names(pattern: str, required_tensor: str | None = None) -> list[str]:
    if not AVAILABLE:
        return []
    names = []
    for path in sorted(PARITY_DIR.glob(pattern)):
        if required_tensor is None or required_tensor in json.loads(path.read_text())["tensors"]:
            names.append(path.stem)
    return names


def load(name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    meta = json.loads((PARITY_DIR / f"{name}.json").read_text())
    return meta, load_file(str(PARITY_DIR / f"{name}.safetensors"))


def assert_close(
    name: str, ours: torch.Tensor, reference: torch.Tensor, *, atol: float = 1e-4, rtol: float = 0.0
) -> None:
    """``|ours - ref| <= atol + rtol * max|ref|`` elementwise; records the max abs diff under ``name``."""
    ours, reference = ours.detach().double().cpu(), reference.detach().double().cpu()
    assert ours.shape == reference.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(reference.shape)}"
    diff = (ours - reference).abs().max().item() if ours.numel() else 0.0
    scale = reference.abs().max().item() if reference.numel() else 0.0
    DIFFS[name] = max(diff, DIFFS.get(name, 0.0))
    SCALES[name] = max(scale, SCALES.get(name, 0.0))
    bound = atol + rtol * scale
    assert diff <= bound, f"{name}: max abs diff {diff:.3g} > {bound:.3g}"


# ------------------------------------------------------------------------------------------ photos
_RECIPE = re.compile(r"^skimage\.data\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)\(\)(?P<index>\[[^\]]*\])?(?:\s|$)")
_SLICE_PART = re.compile(r"^(-?\d+)?(?::(-?\d+)?(?::(-?\d+)?)?)?$")


def parse_index(text: str) -> tuple[int | slice, ...]:
    """``"[:, 80:440]"`` -> ``(slice(None), slice(80, 440))``; only integers and colons are allowed."""
    parts = []
    for part in text[1:-1].split(","):
        match = _SLICE_PART.match(part.strip())
        if match is None:
            raise ValueError(f"unsupported index {part!r} in photo recipe")
        if ":" not in part:
            if not part.strip():
                raise ValueError(f"empty index in photo recipe {text!r}")
            parts.append(int(part))
            continue
        parts.append(slice(*(None if group is None else int(group) for group in match.groups())))
    return tuple(parts)


def photo_from_recipe(recipe: str) -> np.ndarray:
    """Rebuild an ``(H, W, 3)`` uint8 photo from e.g. ``"skimage.data.astronaut()[:, 80:440] (...)"``."""
    match = _RECIPE.match(recipe)
    if match is None:
        raise ValueError(f"cannot parse photo recipe {recipe!r}")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image rebuilds the fixture photos")
    loader = getattr(skimage_data, match["name"], None)
    if not callable(loader):
        raise ValueError(f"skimage.data has no photo loader {match['name']!r}")
    photo = loader()
    if match["index"]:
        photo = photo[parse_index(match["index"])]
    return np.ascontiguousarray(photo)


def photo(image: str) -> np.ndarray:
    """The fixture photo named ``image``, checked against its recorded hash."""
    for name in fixture_names("vision_*.json"):
        meta = json.loads((PARITY_DIR / f"{name}.json").read_text())
        if meta["image"] != image:
            continue
        rebuilt = photo_from_recipe(meta["photo_recipe"])
        assert rebuilt.dtype == np.uint8 and rebuilt.ndim == 3 and rebuilt.shape[2] == 3
        digest = hashlib.sha256(rebuilt.tobytes()).hexdigest()
        assert digest == meta["photo_sha256_of_rgb_bytes"], (
            f"{image}: rebuilt photo differs (scikit-image version?)"
        )
        return rebuilt
    raise KeyError(f"no vision fixture describes the photo {image!r}")


def jpeg_round_trip(image: np.ndarray) -> np.ndarray:
    """The photo as the official training datasets read it back from disk.

    Observed, not documented with the fixtures: the ``train_*`` inputs are reproduced bit for bit only
    after saving the photo as a quality-100 JPEG with PIL's default 4:2:0 chroma subsampling (the
    training datasets open image files; the evaluation fixtures were fed the array directly).
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=100, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))
