"""Pixel shuffle against the released checkpoint's index formulas, element by element."""

import itertools

import pytest
import torch

from xsam.modeling.pixel_shuffle import pixel_shuffle, pixel_shuffle_channels_first


def test_downsample_half_matches_index_formula():
    x = torch.randn(2, 6, 4, 3)
    out = pixel_shuffle(x, 0.5)
    channels = x.shape[-1]
    assert out.shape == (2, 3, 2, 4 * channels)
    for b, i, j, d, a, c in itertools.product(
        range(2), range(3), range(2), range(2), range(2), range(channels)
    ):
        # out[b, i, j, d·2C + a·C + c] = x[b, 2i+d, 2j+a, c]: row offset is the major channel block
        assert out[b, i, j, d * 2 * channels + a * channels + c] == x[b, 2 * i + d, 2 * j + a, c]


def test_upsample_two_matches_index_formula():
    channels = 8
    x = torch.randn(2, 3, 2, channels)
    out = pixel_shuffle(x, 2)
    assert out.shape == (2, 6, 4, channels // 4)
    for b, h, w, d, a, e in itertools.product(
        range(2), range(3), range(2), range(2), range(2), range(channels // 4)
    ):
        # out[b, 2h+d, 2w+a, e] = x[b, h, w, a·(C/2) + d·(C/4) + e]: column offset is the major block
        assert out[b, 2 * h + d, 2 * w + a, e] == x[b, h, w, a * channels // 2 + d * channels // 4 + e]


def test_half_and_two_are_not_inverses():
    x = torch.randn(1, 4, 4, 2)
    roundtrip = pixel_shuffle(pixel_shuffle(x, 0.5), 2)
    assert roundtrip.shape == x.shape
    assert not torch.equal(roundtrip, x)


def test_identity_and_odd_padding():
    x = torch.randn(1, 5, 3, 2)
    assert pixel_shuffle(x, 1) is x
    out = pixel_shuffle(x, 0.5)
    assert out.shape == (1, 3, 2, 8)
    # the padded bottom row / right column are zeros: row offset d=1 of the last output row
    assert torch.all(out[0, 2, :, 2 * 2 : 4 * 2] == 0)


def test_channels_first_variant_is_the_same_mapping():
    x = torch.randn(2, 8, 4, 6)
    expected = pixel_shuffle(x.permute(0, 2, 3, 1), 2).permute(0, 3, 1, 2)
    assert torch.equal(pixel_shuffle_channels_first(x, 2), expected)


def test_rejects_non_integer_factor():
    with pytest.raises(ValueError, match="integer"):
        pixel_shuffle(torch.zeros(1, 4, 4, 4), 0.3)
