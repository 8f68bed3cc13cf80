"""Preprocessing parity against fixtures produced by the official X-SAM processors.

The fixture directory comes from ``XSAM_PARITY_DIR`` (default ``<repo>/../shared/parity``) and its
fixtures are found through its ``index.json``, so the same tests run on any fixture set of that layout.
Photos are rebuilt from the vision fixtures' ``photo_recipe`` (a ``skimage.data`` call plus an optional
slice) and checked by hash before anything is compared.

The SAM view is compared exactly, not within a tolerance: the official fixtures record float row and
column sums of the normalised view, and since padding is exactly 0 and every pixel is
``(u / 255 - mean) / std``, a sum over ``n`` image pixels gives back the integer sum of their intensities
``u`` as ``255 * (sum * std + n * mean)`` (float32 noise moves it by ~1e-2, far from the 0.5 that
rounding tolerates). One intensity level in one pixel changes such an integer sum by one.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from parity_support import (
    PARITY_DIR,
    fixture_params,
    jpeg_round_trip,
    load,
    parse_index,
    photo,
    photo_from_recipe,
)
from xsam.config import ImageEncoderConfig, SegmentationEncoderConfig, XSamConfig
from xsam.data.samples import SampleOptions, _sam_view, scale_jitter
from xsam.processing import preprocess_masks, preprocess_sam, sam_scaled_size, siglip_pixels_uint8

pytestmark = [pytest.mark.parity]

VISION_FIXTURES = fixture_params("vision", required_tensor="siglip_pixel_values_uint8")
PROMPT_FIXTURES = fixture_params("tasks", required_tensor="vprompt_masks_orig_nonzero")
TRAIN_FIXTURES = fixture_params("train", required_tensor="gt_masks_orig_packbits", needs_photo=True)


# ----------------------------------------------------------------------------------------- configs
def _preprocessor_configs() -> tuple[ImageEncoderConfig, SegmentationEncoderConfig]:
    """Our configs from the official ``preprocessor_config.json``s recorded with the fixtures."""
    configs = json.loads((PARITY_DIR / "component_configs.json").read_text())
    siglip, sam = configs["siglip_preprocessor_config"], configs["sam_preprocessor_config"]
    for raw in (siglip, sam):
        # Our transforms hard-code the 1/255 rescale; a different factor would need code, not config.
        assert raw["rescale_factor"] == pytest.approx(1 / 255)
    assert siglip["size"]["height"] == siglip["size"]["width"], "SigLIP resize is square"
    longest = sam["size"]["longest_edge"]
    assert sam["pad_size"] == {"height": longest, "width": longest}, "SAM pads to a square canvas"
    image_config = ImageEncoderConfig(
        image_size=siglip["size"]["height"],
        image_mean=tuple(siglip["image_mean"]),
        image_std=tuple(siglip["image_std"]),
        resample=siglip["resample"],
    )
    segmentation_config = SegmentationEncoderConfig(
        image_size=longest,
        image_mean=tuple(sam["image_mean"]),
        image_std=tuple(sam["image_std"]),
        resample=sam["resample"],
    )
    return image_config, segmentation_config


# --------------------------------------------------------------------------------- exact SAM views
def _intensities(
    pixel_values: torch.Tensor, scaled_size: tuple[int, int], config: SegmentationEncoderConfig
) -> torch.Tensor:
    """Our normalised SAM view ``(3, S, S)`` back to its integer intensities (0 on the padding)."""
    height, width = scaled_size
    assert not pixel_values[:, height:].any() and not pixel_values[:, :, width:].any(), "padding is not 0"
    mean = torch.tensor(config.image_mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(config.image_std, dtype=torch.float64).view(-1, 1, 1)
    levels = (pixel_values[:, :height, :width].double() * std + mean) * 255
    assert (levels - levels.round()).abs().max() < 1e-3, "not a normalised uint8 image"
    return torch.nn.functional.pad(
        levels.round().long(), (0, pixel_values.shape[2] - width, 0, pixel_values.shape[1] - height)
    )


def _official_intensity_sums(
    sums: torch.Tensor, counts: torch.Tensor, config: SegmentationEncoderConfig
) -> torch.Tensor:
    """Integer intensity sums ``(3, L)`` behind the official float sums ``(3, L)`` of ``counts`` ``(L,)``
    image pixels each; asserts the recovery is unambiguous."""
    mean = torch.tensor(config.image_mean, dtype=torch.float64)[:, None]
    std = torch.tensor(config.image_std, dtype=torch.float64)[:, None]
    levels = 255 * (sums.double() * std + counts.double() * mean)
    assert (levels - levels.round()).abs().max() < 0.25, "official sums are not sums of uint8 levels"
    return levels.round().long()


def _pixel_counts(scaled_size: list[int], canvas: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image pixels per canvas row and per canvas column (the rest is padding)."""
    height, width = scaled_size
    rows = torch.tensor([width] * height + [0] * (canvas - height))
    cols = torch.tensor([height] * width + [0] * (canvas - width))
    return rows, cols


def test_recipe_parser():
    assert parse_index("[:, 80:440]") == (slice(None), slice(80, 440))
    assert parse_index("[::2, -3, 1:9:4]") == (slice(None, None, 2), -3, slice(1, 9, 4))
    with pytest.raises(ValueError):
        parse_index("[__import__('os')]")
    with pytest.raises(ValueError):
        photo_from_recipe("os.system('true')")


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", VISION_FIXTURES)
def test_siglip_uint8_matches_official(name):
    meta, tensors = load(name)
    image_config, _ = _preprocessor_configs()
    ours = siglip_pixels_uint8(photo(meta["image"]), image_config, pad_to_square=meta["siglip_pad_to_square"])
    assert torch.equal(ours, tensors["siglip_pixel_values_uint8"])


@pytest.mark.parametrize("name", VISION_FIXTURES)
def test_sam_pixel_values_match_official_exactly(name):
    meta, tensors = load(name)
    _, config = _preprocessor_configs()
    sam = preprocess_sam(photo(meta["image"]), config)
    assert list(sam.scaled_size) == meta["sam_scaled_size_hw"]
    assert list(sam.original_size) == meta["image_size_hw"]
    step = config.image_size // tensors["sam_pixel_values"].shape[-1]
    assert torch.equal(sam.pixel_values[:, ::step, ::step], tensors["sam_pixel_values"])
    levels = _intensities(sam.pixel_values, sam.scaled_size, config)
    rows, cols = _pixel_counts(meta["sam_scaled_size_hw"], config.image_size)
    official_rows = _official_intensity_sums(tensors["sam_pixel_values_row_sums"], rows, config)
    official_cols = _official_intensity_sums(tensors["sam_pixel_values_col_sums"], cols, config)
    assert torch.equal(levels.sum(2), official_rows)
    assert torch.equal(levels.sum(1), official_cols)


def _train_masks(meta, tensors) -> np.ndarray:
    width = meta["image_size_hw"][1]
    return np.unpackbits(tensors["gt_masks_orig_packbits"].numpy(), axis=-1, count=width).astype(bool)


@pytest.mark.parametrize("name", TRAIN_FIXTURES)
def test_training_siglip_view_matches_official(name):
    meta, tensors = load(name)
    image_config, _ = _preprocessor_configs()
    picture = jpeg_round_trip(photo(meta["image"]))
    ours = siglip_pixels_uint8(picture, image_config, pad_to_square=meta["siglip_pad_to_square"])
    assert torch.equal(ours, tensors["siglip_pixel_values_nopad_uint8"])


@pytest.mark.parametrize("name", TRAIN_FIXTURES)
def test_training_sam_view_matches_official_exactly(name):
    """The SAM view and masks that sample building gives a training record, against the official
    training run: every row's integer intensity sum, and the mask canvas, must be equal."""
    meta, tensors = load(name)
    _, config = _preprocessor_configs()
    picture = Image.fromarray(jpeg_round_trip(photo(meta["image"])))
    sam, canvas = _sam_view(
        picture,
        _train_masks(meta, tensors),
        XSamConfig(segmentation_encoder=config),
        random.Random(0),
        SampleOptions(),
    )
    assert list(sam.scaled_size) == meta["sam_scaled_size_hw"]
    rows, _ = _pixel_counts(meta["sam_scaled_size_hw"], config.image_size)
    official = _official_intensity_sums(tensors["sam_pixel_values_row_sums"], rows, config)
    assert torch.equal(_intensities(sam.pixel_values, sam.scaled_size, config).sum(2), official)
    canvas = canvas.to(torch.float32)
    assert torch.equal(canvas.sum(2), tensors["gt_mask_labels_1024_row_sums"])
    assert torch.equal(canvas.sum(1), tensors["gt_mask_labels_1024_col_sums"])


@pytest.mark.parametrize("name", TRAIN_FIXTURES)
def test_gt_masks_match_official(name):
    meta, tensors = load(name)
    _, config = _preprocessor_configs()
    ours = preprocess_masks(_train_masks(meta, tensors), config).to(torch.float32)
    assert torch.equal(ours.sum(2), tensors["gt_mask_labels_1024_row_sums"])
    assert torch.equal(ours.sum(1), tensors["gt_mask_labels_1024_col_sums"])


@pytest.mark.parametrize("name", PROMPT_FIXTURES)
def test_visual_prompt_masks_match_official(name):
    meta, tensors = load(name)
    _, config = _preprocessor_configs()
    count = len(meta["info"]["vprompt_pixel_counts_1024"])
    masks = np.zeros((count, *meta["image_size_hw"]), dtype=bool)
    index, row, col = tensors["vprompt_masks_orig_nonzero"].long().unbind(1)
    masks[index.numpy(), row.numpy(), col.numpy()] = True
    ours = preprocess_masks(masks, config)
    assert torch.equal(torch.nonzero(ours).to(torch.int16), tensors["vprompt_masks_1024_nonzero"])


# --------------------------------------------------------------------- stage-1 random scale (rule)
def _official_random_scale_size(size: tuple[int, int], target: int, scale: float) -> tuple[int, int]:
    """The stage-1 SAM processor's size rule, restated: the square target scaled by ``scale`` and
    rounded half up, the image fitted into it keeping its aspect, each side rounded half up."""
    scaled_target = int(target * scale + 0.5)
    ratio = min(scaled_target / size[0], scaled_target / size[1])
    return int(size[0] * ratio + 0.5), int(size[1] * ratio + 0.5)


@pytest.mark.parametrize(
    ("size", "scale"),
    # each differs from rounding the plain longest-side view again (by one row or column)
    [((400, 600), 0.5), ((333, 500), 1.338), ((480, 640), 0.154), ((512, 360), 1.688), ((427, 640), 0.946)],
)
def test_scale_jitter_sizes_follow_the_official_rounding(size, scale):
    """Stage-1 jitter rounds once, half up, from the original size: e.g. 400 x 600 at 0.5 is 341 x 512
    (rounding the plain 683 x 1024 view again, half to even, would give 342)."""
    image = Image.new("RGB", size[::-1])
    out, _ = scale_jitter(
        image, np.zeros((0, *size), bool), random.Random(0), target_size=1024, scale_range=(scale, scale)
    )
    expected = _official_random_scale_size(size, 1024, scale)
    crop = tuple(min(side, 1024) for side in expected)
    assert (out.height, out.width) == crop
    assert sam_scaled_size(size, int(1024 * scale + 0.5)) == expected
