"""Segmentation connector: single-scale SAM block outputs -> feature maps at strides 8, 16 and 32."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .pixel_shuffle import pixel_shuffle_channels_first


class LayerNorm2d(nn.Module):
    """Channel LayerNorm of a ``(B, C, H, W)`` map, computed in float32 (SAM style)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        x = self.weight.float()[:, None, None] * x + self.bias.float()[:, None, None]
        return x.to(dtype)


class ConnectorLevel(nn.Module):
    """Conv1x1 -> LN -> Conv3x3 -> LN -> Conv1x1 -> LN (no conv biases), then pixel shuffle by ``scale``.

    Maps ``(B, C, H, W)`` to ``(B, C·scale/scale², H·scale, W·scale)``: the last conv widens to ``C·scale``
    channels so that the shuffle ends at ``C/scale`` channels (scale 2 -> C/2 at 2x resolution,
    scale 0.5 -> 2C at half resolution).
    """

    def __init__(self, in_channels: int, hidden_dim: int, scale: float) -> None:
        super().__init__()
        out_channels = int(in_channels * scale)
        self.scale = scale
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden_dim, 1, bias=False),
            LayerNorm2d(hidden_dim),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
            LayerNorm2d(hidden_dim),
            nn.Conv2d(hidden_dim, out_channels, 1, bias=False),
            LayerNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_channels_first(self.layers(x), self.scale)


class SegmentationConnector(nn.Module):
    """One :class:`ConnectorLevel` per selected SAM block; outputs fine -> coarse (strides 8, 16, 32)."""

    def __init__(self, in_channels: int, hidden_dim: int, scale_factors: Sequence[float]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(ConnectorLevel(in_channels, hidden_dim, s) for s in scale_factors)
        self.out_channels = [int(in_channels / s) for s in scale_factors]

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``hidden_states``: channels-last SAM block outputs ``(B, h, w, C)``, one per level."""
        if len(hidden_states) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} SAM hidden states, got {len(hidden_states)}")
        return [level(h.permute(0, 3, 1, 2)) for level, h in zip(self.levels, hidden_states, strict=True)]
