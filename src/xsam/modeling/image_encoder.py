"""Image encoder: transformers' SigLIP vision tower; the LLM reads one of its hidden states."""

from __future__ import annotations

import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from ..config import ImageEncoderConfig


def siglip_config(config: ImageEncoderConfig, attn_implementation: str) -> SiglipVisionConfig:
    hf_config = SiglipVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden_act=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        vision_use_head=config.use_head,
    )
    hf_config._attn_implementation = attn_implementation
    return hf_config


class ImageEncoder(nn.Module):
    """SigLIP vision model returning ``hidden_states[select_layer]``: ``(B, (S/patch)², hidden)``.

    The pooling head and ``post_layernorm`` are kept (the released checkpoint has them) but unused.
    """

    def __init__(self, config: ImageEncoderConfig, *, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.select_layer = config.select_layer
        self.siglip = SiglipVisionModel(siglip_config(config, attn_implementation))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values``: ``(B, 3, S, S)`` normalised SigLIP input."""
        outputs = self.siglip(pixel_values=pixel_values, output_hidden_states=True)
        return outputs.hidden_states[self.select_layer]
