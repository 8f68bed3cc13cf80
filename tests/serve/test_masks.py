"""Masks on the wire: polygons that fill back to the mask, Label Studio's brush RLE, base64 inputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from serving import decode_brush, label_studio_decoder
from xsam.processing import encode_rle
from xsam.serve.masks import (
    bounding_box,
    brush_rle,
    decode_image_string,
    mask_from_wire,
    mask_to_polygons,
    polygons_to_mask,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_a_rectangle_is_four_corners_that_fill_back_exactly():
    mask = np.zeros((20, 30), dtype=bool)
    mask[4:12, 5:25] = True
    (polygon,) = mask_to_polygons(mask)
    assert sorted(map(tuple, polygon)) == [(5, 4), (5, 11), (24, 4), (24, 11)]
    np.testing.assert_array_equal(polygons_to_mask([polygon], mask.shape), mask)


def test_parts_are_separate_polygons_largest_first_and_holes_filled():
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:8, 2:8] = True  # small part
    mask[15:35, 10:30] = True  # large part with a hole
    mask[20:25, 15:20] = False
    mask[38, 38] = True  # one pixel: left out
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2
    large = polygons_to_mask(polygons[:1], mask.shape)
    assert large.sum() == 20 * 20  # the hole is filled
    assert polygons_to_mask(polygons[1:], mask.shape).sum() == 36


def test_an_ellipse_and_a_u_shape_fill_back_closely():
    rows, columns = np.mgrid[:120, :160]
    ellipse = ((columns - 80) / 60) ** 2 + ((rows - 60) / 35) ** 2 <= 1
    u_shape = np.zeros((60, 60), dtype=bool)
    u_shape[10:50, 10:20] = u_shape[10:50, 40:50] = u_shape[40:50, 10:50] = True
    for mask in (ellipse, u_shape):
        assert iou(polygons_to_mask(mask_to_polygons(mask), mask.shape), mask) >= 0.98


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(8, 40), st.integers(8, 40))
def test_blobs_fill_back_to_at_least_their_pixels(seed, height, width):
    rng = np.random.default_rng(seed)
    mask = rng.random((height, width)) < 0.5
    missed = mask & ~polygons_to_mask(mask_to_polygons(mask), mask.shape)
    # every pixel of a part of three or more pixels is inside its polygon; only tiny parts drop
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    assert (sizes[labels[missed]] <= 2).all()


def test_empty_masks():
    empty = np.zeros((5, 5), dtype=bool)
    assert mask_to_polygons(empty) == []
    assert bounding_box(empty) == [0.0, 0.0, 0.0, 0.0]
    assert decode_brush(brush_rle(empty)).tolist() == [0] * 100


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 50), st.integers(1, 50), st.floats(0, 1))
def test_brush_rle_decodes_to_the_mask_as_rgba(seed, height, width, density):
    mask = np.random.default_rng(seed).random((height, width)) < density
    decoded = decode_brush(brush_rle(mask))
    np.testing.assert_array_equal(decoded, np.repeat(mask.reshape(-1).astype(np.uint8) * 255, 4))


def test_brush_rle_splits_runs_longer_than_its_widest_length_field():
    mask = np.ones((300, 300), dtype=bool)  # 360,000 values of 255: six runs
    mask[150, 150] = False
    assert decode_brush(brush_rle(mask)).sum() == (300 * 300 - 1) * 4 * 255


def test_brush_rle_matches_the_label_studio_sdk_on_random_masks():
    brush = label_studio_decoder()
    rng = np.random.default_rng(3)
    for height, width in ((1, 1), (7, 13), (256, 256), (300, 300)):
        mask = rng.random((height, width)) < 0.3
        mask[: height // 2] = True  # long runs too
        decoded = np.asarray(brush.decode_rle(brush_rle(mask)))
        np.testing.assert_array_equal(decoded, np.repeat(mask.reshape(-1).astype(np.uint8) * 255, 4))


def test_mask_prompts_from_the_wire_are_checked():
    region = np.zeros((6, 8), dtype=bool)
    region[1:3, 2:5] = True
    np.testing.assert_array_equal(mask_from_wire(encode_rle(region), (6, 8), "m"), region)
    with pytest.raises(ValueError, match="m is 8x6, the image 4x4"):
        mask_from_wire(encode_rle(region), (4, 4), "m")
    with pytest.raises(ValueError, match="m: "):
        mask_from_wire({"size": [6, 8], "counts": 5}, (6, 8), "m")
    with pytest.raises(ValueError, match="RLE object"):
        mask_from_wire(3, (6, 8), "m")


def test_image_strings_plain_or_data_urls():
    assert decode_image_string("aGk=") == b"hi"
    assert decode_image_string("data:image/png;base64,aGk=") == b"hi"
    with pytest.raises(ValueError, match="base64-encoded"):
        decode_image_string("data:image/png,hi")
    with pytest.raises(ValueError, match="not valid base64"):
        decode_image_string("a b c")
