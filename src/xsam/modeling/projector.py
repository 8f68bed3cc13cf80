"""MLP projectors between the encoders, the language model and the mask decoder."""

from __future__ import annotations

import torch
from torch import nn

from .pixel_shuffle import pixel_shuffle


class MLPProjector(nn.Module):
    """``Linear -> (GELU -> Linear) * (depth - 1)``, optionally after a space-to-depth pixel shuffle.

    With ``downsample == 1`` the input is a token sequence ``(B, N, in_dim)``. Otherwise it is a
    channels-last map ``(B, H, W, C)`` that is pixel-shuffled by ``downsample`` (0.5 in X-SAM: 64x64x1024
    -> 32x32x4096), flattened row-major to ``(B, H·W·downsample², C/downsample²)`` and projected;
    ``in_dim`` is then the channel count *after* the shuffle.
    """

    def __init__(self, in_dim: int, out_dim: int, *, depth: int = 2, downsample: float = 1.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"projector depth must be >= 1, got {depth}")
        self.downsample = downsample
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample != 1:
            x = pixel_shuffle(x, self.downsample).flatten(1, 2)
        return self.layers(x)
