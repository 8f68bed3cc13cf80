"""Naive region sampler: coordinate frame, exhaustive small masks, seeded subsets, empty masks."""

import torch

from xsam.modeling.region_sampler import sample_region_features


def _linear_map(size: int, dim: int = 3) -> torch.Tensor:
    """(h, w, dim) map whose channels are x, y and a constant: bilinear sampling reproduces coordinates."""
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([x, y, torch.ones_like(x)][:dim], dim=-1)


def test_pixel_maps_to_col_over_canvas_times_w_minus_one():
    canvas, side = 64, 8
    mask = torch.zeros(1, canvas, canvas, dtype=torch.bool)
    mask[0, 40, 24] = True  # row 40, col 24
    features = sample_region_features(_linear_map(side), mask, num_points=4)
    # official frame: feature coordinate = pixel / canvas * (side - 1), align_corners=True
    torch.testing.assert_close(features[0], torch.tensor([24 / canvas * 7, 40 / canvas * 7, 1.0]))


def test_small_masks_use_every_pixel_so_the_max_is_exact():
    canvas, side = 64, 8
    mask = torch.zeros(1, canvas, canvas, dtype=torch.bool)
    mask[0, 10:13, 50:53] = True  # 9 pixels <= num_points
    features = sample_region_features(_linear_map(side), mask, num_points=9)
    torch.testing.assert_close(features[0, :2], torch.tensor([52 / canvas * 7, 12 / canvas * 7]))
    again = sample_region_features(
        _linear_map(side), mask, num_points=9, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(features, again)


def test_large_masks_sample_a_reproducible_subset():
    feature_map = torch.randn(8, 8, 16)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 5:60, 5:60] = True
    first = sample_region_features(
        feature_map, mask, num_points=8, generator=torch.Generator().manual_seed(3)
    )
    second = sample_region_features(
        feature_map, mask, num_points=8, generator=torch.Generator().manual_seed(3)
    )
    everything = sample_region_features(feature_map, mask, num_points=mask.sum().item())
    assert torch.equal(first, second)
    assert torch.all(first <= everything + 1e-6)  # a subset's max never exceeds the full max


def test_empty_masks_give_zero_vectors_and_shapes_follow_regions():
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[1, 3, 3] = True
    features = sample_region_features(torch.randn(4, 4, 5), masks, num_points=4)
    assert features.shape == (3, 5)
    assert torch.equal(features[0], torch.zeros(5)) and torch.equal(features[2], torch.zeros(5))
    assert sample_region_features(torch.randn(4, 4, 5), masks[:0]).shape == (0, 5)
