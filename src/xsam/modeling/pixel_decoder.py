"""Mask2Former pixel decoder: a multi-scale deformable-attention encoder plus one FPN stage.

X-SAM feeds it the seg connector's three maps (strides 8, 16, 32 of the 1024 canvas) and reads back
``mask_features`` (stride 8) and the three refined maps used by the mask decoder's masked attention.
The numerics follow transformers' ``Mask2FormerPixelDecoder`` exactly, so that the
official weights load and produce the same outputs; the only departures are structural (our own
module names for the FPN stage, see ``PixelDecoder``).

Every intermediate (position embeddings, reference points, sampling locations) is computed in the
dtype of the projected features, as the reference does, so a bfloat16 decoder behaves like the
official bfloat16 model rather than like an idealised float32 one.

Coordinate frame: sampling locations and reference points are ``(x, y)`` in ``[0, 1]`` relative to
each level's full extent, with pixel centres at ``(i + 0.5) / size`` (``grid_sample`` with
``align_corners=False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsam.config import PixelDecoderConfig

SpatialShapes = Sequence[tuple[int, int]]


def sine_position_embedding(
    height: int,
    width: int,
    num_pos_feats: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> Tensor:
    """Normalised 2-D sine position embedding of DETR / Mask2Former (no padding mask).

    Row and column indices ``1..H`` / ``1..W`` are divided by ``size + 1e-6`` and scaled to
    ``(0, scale]``; each axis gets ``num_pos_feats`` channels that alternate ``sin`` / ``cos`` with
    frequencies ``temperature ** (2 * (k // 2) / num_pos_feats)``. All arithmetic happens in ``dtype``
    (like the reference), so bfloat16 embeddings carry bfloat16 rounding.

    Returns:
        ``(1, 2 * num_pos_feats, H, W)``: channels ``[0, num_pos_feats)`` encode ``y``, the rest ``x``.
    """
    y_features = _axis_sine_features(height, num_pos_feats, device, dtype, temperature, scale)
    x_features = _axis_sine_features(width, num_pos_feats, device, dtype, temperature, scale)
    y_grid = y_features[:, None, :].expand(height, width, num_pos_feats)
    x_grid = x_features[None, :, :].expand(height, width, num_pos_feats)
    return torch.cat((y_grid, x_grid), dim=-1).permute(2, 0, 1).unsqueeze(0)


def _axis_sine_features(
    length: int,
    num_pos_feats: int,
    device: torch.device | str | None,
    dtype: torch.dtype,
    temperature: float,
    scale: float,
) -> Tensor:
    """``(length, num_pos_feats)`` interleaved sin/cos features of one normalised axis."""
    eps = 1e-6
    positions = torch.arange(1, length + 1, device=device, dtype=dtype)
    # Divide by the last cumulative position (= length), as the masked reference does.
    positions = positions / (positions[-1:] + eps) * scale
    channel = torch.arange(num_pos_feats, device=device, dtype=torch.int64).to(dtype)
    frequencies = temperature ** (2 * torch.div(channel, 2, rounding_mode="floor") / num_pos_feats)
    angles = positions[:, None] / frequencies
    interleaved = torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1)
    return interleaved.flatten(-2)


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Pure-PyTorch multi-scale deformable attention (bilinear ``grid_sample``, zero padding).

    Args:
        value: ``(B, S, heads, head_dim)``, the levels' flattened maps concatenated along ``S`` in the
            order of ``spatial_shapes``.
        spatial_shapes: ``(h, w)`` per level; ``sum(h * w) == S``.
        sampling_locations: ``(B, Q, heads, levels, points, 2)``, ``(x, y)`` in ``[0, 1]``.
        attention_weights: ``(B, Q, heads, levels, points)``, softmax-normalised over levels x points.

    Returns:
        ``(B, Q, heads * head_dim)``.
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    # grid_sample expects [-1, 1]; the locations are in [0, 1].
    grids = sampling_locations * 2 - 1
    level_values = value.split([height * width for height, width in spatial_shapes], dim=1)
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, h*w, heads, c) -> (B*heads, c, h, w): one image per (sample, head) pair.
        level_map = level_values[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # (B, Q, heads, points, 2) -> (B*heads, Q, points, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(level_map, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (B*heads, c, Q, levels*points), weighted and summed over the sampled points.
    sampled_points = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(
        batch * heads, 1, num_queries, num_levels * num_points
    )
    output = (sampled_points * weights).sum(-1).view(batch, heads * head_dim, num_queries)
    return output.transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over several feature levels (Deformable DETR, 2-D reference points).

    Each query predicts, per head, ``levels x points`` offsets around its reference point (in pixels of
    the target level) and a softmax weight for each sampled value.
    """

    def __init__(self, hidden_dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(hidden_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(hidden_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(hidden_dim, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, hidden_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a per-head ring, uniform weights, xavier projections."""
        # Nothing to initialise on the meta device; real weights arrive later via load_state_dict.
        if self.sampling_offsets.weight.is_meta:
            return
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        directions = torch.stack((angles.cos(), angles.sin()), dim=-1)
        # Scale so the larger component is 1: the first point lands on a neighbouring pixel.
        directions = directions / directions.abs().amax(dim=-1, keepdim=True)
        point_radius = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        grid = directions[:, None, None, :] * point_radius[None, None, :, None]
        grid = grid.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            nn.init.zeros_(self.sampling_offsets.weight)
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
            nn.init.zeros_(self.attention_weights.weight)
            nn.init.zeros_(self.attention_weights.bias)
            for projection in (self.value_proj, self.output_proj):
                nn.init.xavier_uniform_(projection.weight)
                nn.init.zeros_(projection.bias)

    def forward(
        self, queries: Tensor, values: Tensor, reference_points: Tensor, spatial_shapes: SpatialShapes
    ) -> Tensor:
        """Attend from ``queries`` to the multi-level ``values``.

        Args:
            queries: ``(B, Q, D)``, already including any position embedding.
            values: ``(B, S, D)``, levels flattened and concatenated in ``spatial_shapes`` order.
            reference_points: ``(B or 1, Q, levels, 2)``, ``(x, y)`` in ``[0, 1]``.
            spatial_shapes: ``(h, w)`` per level.

        Returns:
            ``(B, Q, D)``.
        """
        batch, num_queries, _ = queries.shape
        head_dim = self.hidden_dim // self.num_heads
        projected_values = self.value_proj(values).view(batch, values.shape[1], self.num_heads, head_dim)
        layout = (batch, num_queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(queries).view(*layout, 2)
        weights = self.attention_weights(queries).view(batch, num_queries, self.num_heads, -1)
        weights = weights.softmax(dim=-1).view(layout)
        # Offsets are in pixels of each level; normalise by that level's (width, height).
        level_sizes = torch.tensor(
            [[width, height] for height, width in spatial_shapes], dtype=torch.long, device=queries.device
        )
        locations = (
            reference_points[:, :, None, :, None, :] + offsets / level_sizes[None, None, None, :, None, :]
        )
        attended = multi_scale_deformable_attention(projected_values, spatial_shapes, locations, weights)
        return self.output_proj(attended)


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU feed-forward block."""

    def __init__(
        self, hidden_dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(hidden_dim, num_heads, num_levels, num_points)
        self.self_attn_layer_norm = nn.LayerNorm(hidden_dim)
        self.fc1 = nn.Linear(hidden_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, hidden_dim)
        self.final_layer_norm = nn.LayerNorm(hidden_dim)

    def forward(
        self,
        hidden_states: Tensor,
        position_embeddings: Tensor,
        reference_points: Tensor,
        spatial_shapes: SpatialShapes,
    ) -> Tensor:
        """``(B, S, D)`` tokens of all levels -> ``(B, S, D)``; positions only enter the queries."""
        attended = self.self_attn(
            hidden_states + position_embeddings, hidden_states, reference_points, spatial_shapes
        )
        hidden_states = self.self_attn_layer_norm(hidden_states + attended)
        feed_forward = self.fc2(F.relu(self.fc1(hidden_states)))
        return self.final_layer_norm(hidden_states + feed_forward)


def encoder_reference_points(
    spatial_shapes: SpatialShapes, *, device: torch.device | str | None = None, dtype: torch.dtype
) -> Tensor:
    """Pixel-centre reference points of every token, for the unpadded case.

    Returns:
        ``(1, S, levels, 2)``, ``(x, y)`` in ``(0, 1)``; a token looks at the same relative position in
        every level.
    """
    per_level = []
    for height, width in spatial_shapes:
        centre_y = torch.linspace(0.5, height - 0.5, height, device=device, dtype=dtype) / height
        centre_x = torch.linspace(0.5, width - 0.5, width, device=device, dtype=dtype) / width
        grid_y, grid_x = torch.meshgrid(centre_y, centre_x, indexing="ij")
        per_level.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
    points = torch.cat(per_level, dim=0)
    return points[None, :, None, :].expand(1, -1, len(spatial_shapes), 2)


class DeformableEncoder(nn.Module):
    """Stack of ``DeformableEncoderLayer`` sharing one set of reference points."""

    def __init__(self, config: PixelDecoderConfig, num_levels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(
                config.hidden_dim, config.num_heads, num_levels, config.num_points, config.ffn_dim
            )
            for _ in range(config.num_layers)
        )

    def forward(
        self, hidden_states: Tensor, position_embeddings: Tensor, spatial_shapes: SpatialShapes
    ) -> Tensor:
        """``(B, S, D)`` flattened levels (plus ``(B or 1, S, D)`` positions) -> ``(B, S, D)``."""
        reference_points = encoder_reference_points(
            spatial_shapes, device=hidden_states.device, dtype=hidden_states.dtype
        )
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings, reference_points, spatial_shapes)
        return hidden_states


@dataclass
class PixelDecoderOutput:
    """What the mask decoder consumes.

    Attributes:
        mask_features: ``(B, mask_dim, H0, W0)`` per-pixel embeddings at the resolution of the finest
            input ``features[0]`` (stride 8 for X-SAM, not Mask2Former's usual stride 4).
        multi_scale_features: the deformable encoder's outputs, coarse -> fine, each
            ``(B, hidden_dim, h, w)``.
    """

    mask_features: Tensor
    multi_scale_features: list[Tensor]


class PixelDecoder(nn.Module):
    """Mask2Former's MSDeformAttn pixel decoder.

    ``feature_channels`` / ``feature_strides`` describe the inputs fine -> coarse (X-SAM: channels
    ``[512, 1024, 2048]``, strides ``[8, 16, 32]``). All levels enter the deformable encoder coarse ->
    fine, so ``input_projections[0]`` and ``level_embed[0]`` belong to the coarsest map. Then
    ``log2(min stride) - log2(common_stride)`` FPN stages each add ``lateral_convs[j](features[j])``
    to the upsampled finest map so far and refine it with ``output_convs[j]``; for X-SAM that is one
    stage on the stride-8 input again. (The official checkpoint names these ``adapter_{j+1}`` and
    ``layer_{j+1}``.)
    """

    def __init__(
        self, config: PixelDecoderConfig, feature_channels: Sequence[int], feature_strides: Sequence[int]
    ) -> None:
        super().__init__()
        if len(feature_channels) != len(feature_strides):
            raise ValueError(f"{len(feature_channels)} feature channels but {len(feature_strides)} strides")
        if list(feature_strides) != sorted(feature_strides):
            raise ValueError(f"feature_strides must be listed fine -> coarse, got {list(feature_strides)}")
        hidden_dim = config.hidden_dim
        self.num_levels = len(feature_channels)
        self.input_projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim))
            for channels in reversed(feature_channels)
        )
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, hidden_dim))
        self.encoder = DeformableEncoder(config, self.num_levels)
        num_fpn_levels = round(math.log2(min(feature_strides)) - math.log2(config.common_stride))
        self.lateral_convs = nn.ModuleList(
            _lateral_conv(feature_channels[level], hidden_dim) for level in range(num_fpn_levels)
        )
        self.output_convs = nn.ModuleList(_output_conv(hidden_dim) for _ in range(num_fpn_levels))
        self.mask_projection = nn.Conv2d(hidden_dim, config.mask_dim, kernel_size=1)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # The attention layers initialise themselves; only the level embedding is left (meta: skip).
        if not self.level_embed.is_meta:
            nn.init.normal_(self.level_embed)

    def forward(self, features: Sequence[Tensor]) -> PixelDecoderOutput:
        """Decode the backbone maps.

        Args:
            features: fine -> coarse, ``features[i]`` of shape ``(B, feature_channels[i], H_i, W_i)``;
                cast to the decoder's parameter dtype if they differ.

        Returns:
            ``PixelDecoderOutput``; ``mask_features`` always has ``features[0]``'s spatial size, because
            the last FPN stage's lateral input is ``features[0]`` itself (and without FPN stages the
            finest encoder level is ``features[0]``).
        """
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        dtype = self.level_embed.dtype
        features = [feature.to(dtype) for feature in features]
        encoded_maps = self._encode(features[::-1])
        finest = encoded_maps[-1]
        for level in reversed(range(len(self.lateral_convs))):
            lateral = self.lateral_convs[level](features[level])
            upsampled = F.interpolate(finest, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            finest = self.output_convs[level](lateral + upsampled)
        return PixelDecoderOutput(
            mask_features=self.mask_projection(finest), multi_scale_features=encoded_maps
        )

    def _encode(self, coarse_to_fine: Sequence[Tensor]) -> list[Tensor]:
        """Run the deformable encoder over all levels; returns ``(B, D, h, w)`` maps coarse -> fine."""
        projected = [
            projection(x) for projection, x in zip(self.input_projections, coarse_to_fine, strict=True)
        ]
        spatial_shapes = [(int(x.shape[-2]), int(x.shape[-1])) for x in projected]
        tokens = torch.cat([x.flatten(2).transpose(1, 2) for x in projected], dim=1)
        positions = self._level_position_embeddings(spatial_shapes, coarse_to_fine[0].device)
        encoded = self.encoder(tokens, positions, spatial_shapes)
        batch, _, hidden_dim = encoded.shape
        per_level = encoded.split([height * width for height, width in spatial_shapes], dim=1)
        return [
            level.transpose(1, 2).reshape(batch, hidden_dim, height, width)
            for level, (height, width) in zip(per_level, spatial_shapes, strict=True)
        ]

    def _level_position_embeddings(self, spatial_shapes: SpatialShapes, device: torch.device) -> Tensor:
        """``(1, S, D)`` sine embedding of every token plus its level's learned embedding."""
        hidden_dim = self.level_embed.shape[1]
        per_level = []
        for level, (height, width) in enumerate(spatial_shapes):
            sine = sine_position_embedding(
                height, width, hidden_dim // 2, device=device, dtype=self.level_embed.dtype
            )
            per_level.append(sine.flatten(2).transpose(1, 2) + self.level_embed[level])
        return torch.cat(per_level, dim=1)


def _lateral_conv(in_channels: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden_dim, kernel_size=1, bias=False), nn.GroupNorm(32, hidden_dim)
    )


def _output_conv(hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(32, hidden_dim),
        nn.ReLU(),
    )
