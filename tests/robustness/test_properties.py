"""Properties that must hold for every input, checked on many generated ones (hypothesis): the category
prompt parser, visual-prompt rasterisation and COCO RLE round trips."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xsam.processing import box_mask, decode_rle, encode_rle, point_mask, scribble_mask
from xsam.tasks.generic import SegmentationKind, parse_category_prompt

SETTINGS = settings(max_examples=150, deadline=None)

# names as users type them: letters, digits, spaces, dashes and commas (quoted when they hold one)
names = st.text(alphabet="abcxyz019 -,", min_size=1, max_size=12).filter(lambda n: n.strip(" ,") == n and n)
name_lists = st.lists(names, min_size=0, max_size=5, unique=True)


def _section(key: str, section: list[str]) -> str:
    return f"{key}: " + ", ".join(f'"{name}"' if "," in name else name for name in section)


@SETTINGS
@given(name_lists, name_lists)
def test_category_prompts_parse_back_to_their_names(things, stuff):
    if (not things and not stuff) or set(things) & set(stuff):
        return
    prompt = "; ".join(
        _section(key, section) for key, section in (("ins", things), ("sem", stuff)) if section
    )
    spec = parse_category_prompt(prompt)
    assert spec.names == tuple(things) + tuple(stuff)
    assert spec.is_thing == (True,) * len(things) + (False,) * len(stuff)
    expected = SegmentationKind.PANOPTIC if things and stuff else SegmentationKind.INSTANCE
    assert spec.kind is (expected if things else SegmentationKind.SEMANTIC)


sizes = st.tuples(st.integers(1, 40), st.integers(1, 40))
coordinates = st.floats(-60, 60, allow_nan=False)


@SETTINGS
@given(sizes, coordinates, coordinates, st.integers(0, 6))
def test_a_point_mask_is_the_disk_around_the_rounded_pixel(size, x, y, radius):
    mask = point_mask(np.array([[x, y]]), size, radius=radius)
    row = min(max(int(np.floor(y + 0.5)), 0), size[0] - 1)
    col = min(max(int(np.floor(x + 0.5)), 0), size[1] - 1)
    assert mask.shape == size and mask[row, col]
    rows, cols = np.nonzero(mask)
    assert (((rows - row) ** 2 + (cols - col) ** 2) <= radius**2).all()


@SETTINGS
@given(sizes, coordinates, coordinates, coordinates, coordinates)
def test_a_box_mask_is_the_clipped_inclusive_rectangle(size, x0, y0, x1, y1):
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    mask = box_mask((x0, y0, x1, y1), size)
    clip = lambda value, high: min(max(int(np.floor(value + 0.5)), 0), high - 1)  # noqa: E731
    top, bottom, left, right = clip(y0, size[0]), clip(y1, size[0]), clip(x0, size[1]), clip(x1, size[1])
    expected = np.zeros(size, dtype=bool)
    expected[top : bottom + 1, left : right + 1] = True
    assert np.array_equal(mask, expected)


@SETTINGS
@given(sizes, st.lists(st.tuples(coordinates, coordinates), min_size=1, max_size=5), st.integers(0, 4))
def test_a_scribble_covers_every_clipped_vertex(size, vertices, radius):
    mask = scribble_mask(np.array(vertices), size, radius=radius)
    assert mask.shape == size and mask.any()
    for x, y in vertices:
        row = min(max(int(np.floor(y + 0.5)), 0), size[0] - 1)
        col = min(max(int(np.floor(x + 0.5)), 0), size[1] - 1)
        assert mask[row, col]


@SETTINGS
@given(arrays(np.bool_, st.tuples(st.integers(1, 30), st.integers(1, 30))))
def test_rle_round_trips(mask):
    encoded = encode_rle(mask)
    assert encoded["size"] == list(mask.shape) and isinstance(encoded["counts"], str)
    assert np.array_equal(decode_rle(encoded), mask)
    flat = mask.flatten(order="F").astype(np.int64)  # uncompressed RLE: runs of 0s then 1s, column-major
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], changes])).tolist()
    assert np.array_equal(decode_rle({"size": list(mask.shape), "counts": runs}), mask)
