"""Preprocessing parity against fixtures produced by the official X-SAM processors.

The fixture directory comes from ``XSAM_PARITY_DIR`` (default ``<repo>/../shared/parity``), so the same
tests run on any fixture set of that layout. Photos are rebuilt from each fixture's ``photo_recipe``
(a ``skimage.data`` call plus an optional slice) and checked by hash before anything is compared.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parity_support import (
    AVAILABLE,
    PARITY_DIR,
    SKIP_REASON,
    fixture_names,
    jpeg_round_trip,
    load,
    parse_index,
    photo,
    photo_from_recipe,
)
from xsam.config import ImageEncoderConfig, SegmentationEncoderConfig
from xsam.processing import preprocess_masks, preprocess_sam, siglip_pixels_uint8

pytestmark = [pytest.mark.parity, pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)]

SUM_ATOL = 1e-4
"""Row/column sums of the SAM input: 1024 terms of magnitude ~2, summed in float64 on our side."""

VISION_FIXTURES = fixture_names("vision_*.json", "siglip_pixel_values_uint8")
PROMPT_FIXTURES = fixture_names("task_*.json", "vprompt_masks_orig_nonzero")
TRAIN_FIXTURES = fixture_names("train_*.json", "gt_masks_orig_packbits")
_load = load
_photo = photo
_jpeg_round_trip = jpeg_round_trip
_parse_index = parse_index
_photo_from_recipe = photo_from_recipe


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


def test_recipe_parser():
    assert _parse_index("[:, 80:440]") == (slice(None), slice(80, 440))
    assert _parse_index("[::2, -3, 1:9:4]") == (slice(None, None, 2), -3, slice(1, 9, 4))
    with pytest.raises(ValueError):
        _parse_index("[__import__('os')]")
    with pytest.raises(ValueError):
        _photo_from_recipe("os.system('true')")


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", VISION_FIXTURES)
def test_siglip_uint8_matches_official(name):
    meta, tensors = _load(name)
    image_config, _ = _preprocessor_configs()
    ours = siglip_pixels_uint8(
        _photo(meta["image"]), image_config, pad_to_square=meta["siglip_pad_to_square"]
    )
    assert torch.equal(ours, tensors["siglip_pixel_values_uint8"])


@pytest.mark.parametrize("name", VISION_FIXTURES)
def test_sam_pixel_values_match_official(name):
    meta, tensors = _load(name)
    _, segmentation_config = _preprocessor_configs()
    sam = preprocess_sam(_photo(meta["image"]), segmentation_config)
    assert list(sam.scaled_size) == meta["sam_scaled_size_hw"]
    assert list(sam.original_size) == meta["image_size_hw"]
    torch.testing.assert_close(sam.pixel_values[:, ::8, ::8], tensors["sam_pixel_values"], atol=1e-5, rtol=0)
    pixels = sam.pixel_values.double()
    for axis, key in ((2, "sam_pixel_values_row_sums"), (1, "sam_pixel_values_col_sums")):
        torch.testing.assert_close(pixels.sum(axis), tensors[key].double(), atol=SUM_ATOL, rtol=0)


@pytest.mark.parametrize("name", TRAIN_FIXTURES)
def test_unpadded_siglip_and_sam_rows_match_official_training_inputs(name):
    meta, tensors = _load(name)
    image_config, segmentation_config = _preprocessor_configs()
    photo = _jpeg_round_trip(_photo(meta["image"]))
    ours = siglip_pixels_uint8(photo, image_config, pad_to_square=meta["siglip_pad_to_square"])
    assert torch.equal(ours, tensors["siglip_pixel_values_nopad_uint8"])
    rows = preprocess_sam(photo, segmentation_config).pixel_values.double().sum(2)
    torch.testing.assert_close(rows, tensors["sam_pixel_values_row_sums"].double(), atol=SUM_ATOL, rtol=0)


@pytest.mark.parametrize("name", TRAIN_FIXTURES)
def test_gt_masks_match_official(name):
    meta, tensors = _load(name)
    _, segmentation_config = _preprocessor_configs()
    width = meta["image_size_hw"][1]
    masks = np.unpackbits(tensors["gt_masks_orig_packbits"].numpy(), axis=-1, count=width)
    ours = preprocess_masks(masks, segmentation_config).to(torch.float32)
    assert torch.equal(ours.sum(2), tensors["gt_mask_labels_1024_row_sums"])
    assert torch.equal(ours.sum(1), tensors["gt_mask_labels_1024_col_sums"])


@pytest.mark.parametrize("name", PROMPT_FIXTURES)
def test_visual_prompt_masks_match_official(name):
    meta, tensors = _load(name)
    _, segmentation_config = _preprocessor_configs()
    count = len(meta["info"]["vprompt_pixel_counts_1024"])
    masks = np.zeros((count, *meta["image_size_hw"]), dtype=bool)
    index, row, col = tensors["vprompt_masks_orig_nonzero"].long().unbind(1)
    masks[index.numpy(), row.numpy(), col.numpy()] = True
    ours = preprocess_masks(masks, segmentation_config)
    assert torch.equal(torch.nonzero(ours).to(torch.int16), tensors["vprompt_masks_1024_nonzero"])
