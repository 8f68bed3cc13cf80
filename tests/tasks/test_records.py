"""Lazy masks of dataset records: RLE (compressed and not), polygons, loaders, and validation."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from xsam.tasks.records import Mask, Record, Segment


def _square(height=6, width=8):
    array = np.zeros((height, width), dtype=bool)
    array[1:4, 2:6] = True
    return array


def test_rle_polygon_and_loader_masks_decode_to_the_same_array():
    array = _square()
    compressed = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    as_text = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    counts, value, run = [], False, 0
    for pixel in array.flatten(order="F"):  # uncompressed RLE: column-major runs starting with zeros
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    masks = [
        Mask(6, 8, rle=as_text),
        Mask(6, 8, rle={"size": [6, 8], "counts": counts}),
        Mask(6, 8, polygons=([2, 1, 6, 1, 6, 4, 2, 4],)),
        Mask.from_array(array),
    ]
    for mask in masks[:2] + masks[3:]:
        assert np.array_equal(mask.decode(), array)
    # polygons rasterise the boundary inclusively; the interior must agree
    assert (
        mask_utils.area(mask_utils.encode(np.asfortranarray(masks[2].decode().astype(np.uint8))))
        >= array.sum()
    )


def test_mask_needs_exactly_one_source_and_the_right_size():
    with pytest.raises(ValueError, match="exactly one"):
        Mask(2, 2)
    with pytest.raises(ValueError, match="exactly one"):
        Mask(2, 2, rle={"size": [2, 2], "counts": [4]}, loader=lambda: np.zeros((2, 2)))
    with pytest.raises(ValueError, match="expected"):
        Mask(3, 3, loader=lambda: np.zeros((2, 2))).decode()


def test_record_defaults_are_independent():
    first = Record(task="generic", image_path=None, height=2, width=2)
    second = Record(task="generic", image_path=None, height=2, width=2)
    first.segments.append(Segment(Mask.from_array(np.ones((2, 2))), "sky", is_thing=False))
    assert second.segments == []
