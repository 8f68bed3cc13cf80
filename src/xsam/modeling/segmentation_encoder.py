"""Segmentation encoder: transformers' SAM ViT, exposing the block outputs X-SAM reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import SamVisionConfig, SamVisionModel

from ..config import SegmentationEncoderConfig


def sam_vision_config(config: SegmentationEncoderConfig, attn_implementation: str) -> SamVisionConfig:
    hf_config = SamVisionConfig(
        hidden_size=config.hidden_size,
        mlp_dim=config.mlp_dim,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        window_size=config.window_size,
        global_attn_indexes=list(config.global_attn_indexes),
        output_channels=config.output_channels,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        # transformers' SAM default (1e-10) assumes pretrained weights get loaded; from scratch it leaves
        # a dead encoder (residual stream ~1e-9, LayerNorms amplifying gradients to ~1e10)
        initializer_range=0.02,
    )
    hf_config._attn_implementation = attn_implementation
    return hf_config


@dataclass
class SegmentationEncoderOutput:
    """Channels-last SAM block outputs ``(B, g, g, hidden)`` with ``g = image_size / patch_size``."""

    projector_input: torch.Tensor
    connector_inputs: list[torch.Tensor]


class SegmentationEncoder(nn.Module):
    """SAM vision encoder. ``hidden_states[i]`` is the output of block ``i`` (0 = embeddings).

    The neck exists (the checkpoint has it) but its output is not used by X-SAM.
    """

    def __init__(self, config: SegmentationEncoderConfig, *, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.projector_layer = config.projector_layer
        self.connector_layers = tuple(config.connector_layers)
        self.sam = SamVisionModel(sam_vision_config(config, attn_implementation))

    def forward(self, pixel_values: torch.Tensor) -> SegmentationEncoderOutput:
        """``pixel_values``: ``(B, 3, S, S)`` normalised, zero-padded SAM input."""
        hidden_states = self.sam(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        return SegmentationEncoderOutput(
            projector_input=hidden_states[self.projector_layer],
            connector_inputs=[hidden_states[i] for i in self.connector_layers],
        )
