"""Naive region sampler: a visual prompt mask -> one embedding in the LLM space (no parameters)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_region_features(
    feature_map: torch.Tensor,
    region_masks: torch.Tensor,
    *,
    num_points: int = 256,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Max-pool bilinear samples of ``feature_map`` at the foreground pixels of each region mask.

    Args:
        feature_map: ``(h, w, D)`` channels-last map of one image (the seg projector output, 32x32x3072
            at official size).
        region_masks: ``(R, S, S)`` binary masks on the padded SAM canvas (row, column pixel frame).
        num_points: pixels sampled per region; regions with at most this many foreground pixels use
            all of them (the max-pool is then deterministic), larger ones a random subset.
        generator: makes the subset reproducible.

    Returns:
        ``(R, D)`` region embeddings; an empty mask gives a zero vector. Pixel ``(row, col)`` maps to
        feature coordinate ``col / S · (w - 1)`` (grid_sample with ``align_corners=True``).
    """
    dim = feature_map.shape[-1]
    canvas = region_masks.shape[-1]
    image = feature_map.permute(2, 0, 1).unsqueeze(0)  # (1, D, h, w)
    outputs = []
    for mask in region_masks:
        coords = mask.nonzero()  # (n, 2) as (row, col)
        if len(coords) == 0:
            outputs.append(feature_map.new_zeros(dim))
            continue
        if len(coords) > num_points:
            keep = torch.randperm(len(coords), generator=generator, device="cpu")[:num_points]
            coords = coords[keep.to(coords.device)]
        # grid_sample takes (x, y) in [-1, 1]; normalise by the canvas size as the official sampler does.
        grid = coords.flip(-1).to(feature_map.dtype) / canvas * 2 - 1
        sampled = F.grid_sample(image, grid.view(1, 1, -1, 2), mode="bilinear", align_corners=True)
        outputs.append(sampled.view(dim, -1).amax(dim=1))
    if not outputs:
        return feature_map.new_zeros(0, dim)
    return torch.stack(outputs)
