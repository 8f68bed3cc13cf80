"""Masked-attention transformer decoder (Mask2Former) with X-SAM's ``<SEG>`` query conditioning.

A fixed set of learned queries is refined by ``num_layers`` post-norm layers. Layer ``i`` attends to
pixel-decoder level ``i % num_levels`` (coarse -> fine, cycling) and only to the pixels inside the mask it
predicted at the previous stage. Masks (and the LayerNorm-ed query states the class head reads) are
predicted ``num_layers + 1`` times: once from the initial queries and once after every layer.

X-SAM's only change to Mask2Former is ``query_offset``: the projected ``<SEG>`` embedding is added to
every content query before the first layer; the query position embeddings are left alone.

Numerically this matches ``transformers``' ``Mask2FormerTransformerModule`` without input projections
(feature dim == hidden dim); ``tests/test_mask_decoder.py`` pins that and documents the weight names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MaskDecoderConfig
from .pixel_decoder import sine_position_embedding

# Init of the official stage-1 run, which trains the decoder from scratch (``reinit_decoder=True``).
_INIT_STD = 0.02


@dataclass
class MaskDecoderOutput:
    """Predictions of every stage ``p`` in ``0..num_layers`` (stage 0 = before the first layer).

    Attributes:
        query_states: ``(P, N, Q, D)`` LayerNorm-ed query states; the class head reads these.
        mask_logits: ``(P, N, Q, H, W)`` mask logits at the resolution of ``mask_features``.
    """

    query_states: Tensor
    mask_logits: Tensor


class QuerySelfAttention(nn.Module):
    """Multi-head self-attention among the queries; positions are added to queries and keys, not values."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, hidden_states: Tensor, position_embeddings: Tensor) -> Tensor:
        """``hidden_states`` ``(N, Q, D)``, ``position_embeddings`` broadcastable to it -> ``(N, Q, D)``."""
        with_position = hidden_states + position_embeddings
        query = self._split_heads(self.q_proj(with_position))
        key = self._split_heads(self.k_proj(with_position))
        value = self._split_heads(self.v_proj(hidden_states))
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.out_proj(attended.transpose(1, 2).flatten(2))

    def _split_heads(self, states: Tensor) -> Tensor:
        """``(N, Q, D)`` -> ``(N, heads, Q, D / heads)``."""
        return states.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)


class MaskedAttentionDecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> ReLU FFN, each followed by residual and LayerNorm.

    ``cross_attn`` is an ``nn.MultiheadAttention`` so its parameters keep the ``in_proj_weight`` /
    ``in_proj_bias`` / ``out_proj`` layout of the released checkpoint.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn = QuerySelfAttention(dim, num_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(
        self,
        queries: Tensor,
        query_positions: Tensor,
        memory: Tensor,
        memory_positions: Tensor,
        blocked: Tensor,
    ) -> Tensor:
        """Update the queries with one pixel-decoder level.

        Args:
            queries: ``(N, Q, D)`` content queries.
            query_positions: ``(1, Q, D)`` query position embeddings.
            memory: ``(N, S, D)`` flattened level features (level embedding already added).
            memory_positions: ``(1, S, D)`` sine position embeddings of that level.
            blocked: ``(N * heads, Q, S)`` bool, True where a query may not attend to a pixel.

        Returns:
            ``(N, Q, D)`` updated queries.
        """
        attended, _ = self.cross_attn(
            queries + query_positions,
            memory + memory_positions,
            memory,
            attn_mask=blocked,
            need_weights=False,
        )
        queries = self.cross_attn_layer_norm(queries + attended)
        queries = self.self_attn_layer_norm(queries + self.self_attn(queries, query_positions))
        return self.final_layer_norm(queries + self.fc2(F.relu(self.fc1(queries))))


class MaskDecoder(nn.Module):
    """Mask2Former transformer decoder plus mask head, conditioned on one ``<SEG>`` embedding per sample.

    Submodule names follow the released checkpoint's ``segmentor.decoder.*`` keys one to one (see the
    rename table in ``tests/test_mask_decoder.py``).
    """

    def __init__(self, config: MaskDecoderConfig, num_levels: int) -> None:
        super().__init__()
        dim = config.hidden_dim
        self.num_heads = config.num_heads
        self.num_levels = num_levels
        self.query_features = nn.Embedding(config.num_queries, dim)
        self.query_position_embeddings = nn.Embedding(config.num_queries, dim)
        self.level_embed = nn.Embedding(num_levels, dim)
        self.layers = nn.ModuleList(
            MaskedAttentionDecoderLayer(dim, config.num_heads, config.ffn_dim)
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.mask_embedder = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise like the official from-scratch decoder: xavier-uniform layer matrices, N(0, 0.02)
        embeddings and mask-MLP weights, zero biases, unit LayerNorms. Works on meta tensors (no-op)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=_INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=_INIT_STD)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for layer in self.layers:
            nn.init.zeros_(layer.cross_attn.in_proj_bias)
            for parameter in layer.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)

    def forward(
        self,
        multi_scale_features: Sequence[Tensor],
        mask_features: Tensor,
        query_offset: Tensor | None = None,
    ) -> MaskDecoderOutput:
        """Predict masks and query states at every stage.

        Args:
            multi_scale_features: ``num_levels`` maps ``(N, D, h_l, w_l)``, coarse -> fine.
            mask_features: ``(N, D, H, W)`` per-pixel embeddings the masks are read from.
            query_offset: ``(N, D)`` projected ``<SEG>`` embedding added to every content query.

        Returns:
            ``MaskDecoderOutput`` with ``P = num_layers + 1`` stages.
        """
        if len(multi_scale_features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(multi_scale_features)}")
        memories, memory_positions = self._flatten_levels(multi_scale_features)
        level_sizes = [tuple(features.shape[-2:]) for features in multi_scale_features]

        queries = self.query_features.weight.expand(mask_features.shape[0], -1, -1)
        if query_offset is not None:
            queries = queries + query_offset[:, None, :]
        query_positions = self.query_position_embeddings.weight[None]

        query_states, mask_logits = self._predict(queries, mask_features)
        all_states, all_logits = [query_states], [mask_logits]
        for index, layer in enumerate(self.layers):
            level = index % self.num_levels
            blocked = self._attention_mask(mask_logits, level_sizes[level])
            queries = layer(queries, query_positions, memories[level], memory_positions[level], blocked)
            query_states, mask_logits = self._predict(queries, mask_features)
            all_states.append(query_states)
            all_logits.append(mask_logits)
        return MaskDecoderOutput(query_states=torch.stack(all_states), mask_logits=torch.stack(all_logits))

    def _flatten_levels(self, multi_scale_features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: features ``(N, h*w, D)`` + level embedding, and sine positions ``(1, h*w, D)``."""
        memories, positions = [], []
        for level, features in enumerate(multi_scale_features):
            height, width = features.shape[-2:]
            position = sine_position_embedding(
                height, width, features.shape[1] // 2, device=features.device, dtype=features.dtype
            )
            positions.append(position.flatten(2).transpose(1, 2))
            memories.append(features.flatten(2).transpose(1, 2) + self.level_embed.weight[level])
        return memories, positions

    def _predict(self, queries: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, Q, D)`` queries -> LayerNorm-ed states ``(N, Q, D)`` and mask logits ``(N, Q, H, W)``."""
        query_states = self.norm(queries)
        embedding = query_states
        for index, linear in enumerate(self.mask_embedder):
            embedding = linear(embedding)
            if index < len(self.mask_embedder) - 1:
                embedding = F.relu(embedding)
        return query_states, torch.einsum("nqc,nchw->nqhw", embedding, mask_features)

    def _attention_mask(self, mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Mask logits ``(N, Q, H, W)`` -> bool ``(N * heads, Q, h*w)``, True = may not attend.

        Row order ``n * heads + h`` is what ``nn.MultiheadAttention`` expects for a 3-D mask.
        """
        resized = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False)
        # sigmoid < 0.5, not logit < 0: the two differ for tiny negative logits whose sigmoid rounds to 0.5.
        blocked = resized.sigmoid().flatten(2) < 0.5
        # A query whose mask is empty at this level would attend to nothing (NaN); let it see everything.
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        return blocked.repeat_interleave(self.num_heads, dim=0)
