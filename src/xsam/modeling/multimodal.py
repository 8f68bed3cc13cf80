"""Splice image and region embeddings into the token sequence, and read embeddings back out.

Token ids use two sentinels (see :class:`~xsam.config.TokenConfig`): the ``<image>`` id expands to the
image's LLM tokens (SigLIP then SAM), each ``<region>`` id becomes one region embedding. ``cond_ids``
(phrase index from ``<p>`` through ``</p>``, -1 elsewhere) and ``seg_ids`` (running index at ``<SEG>``
tokens, -1 elsewhere) are expanded alongside; region rows keep their text position's ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..tokens import IGNORE_INDEX


@dataclass
class MultimodalSequence:
    """The spliced batch, right-padded to the longest sample. All tensors are ``(B, L, ...)``."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    cond_ids: torch.Tensor
    seg_ids: torch.Tensor
    image_mask: torch.Tensor
    labels: torch.Tensor | None = None


def _splice_one(
    ids: torch.Tensor,
    token_embeds: torch.Tensor,
    image_tokens: torch.Tensor | None,
    region_embeds: torch.Tensor | None,
    image_index: int,
    region_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(embeds (L, H), source (L,))`` where ``source`` maps each row to its text position."""
    pieces, sources = [], []
    image_positions = (ids == image_index).nonzero().flatten().tolist()
    if len(image_positions) > 1:
        raise ValueError(f"a sample may hold one <image> placeholder, found {len(image_positions)}")
    region_rows = (ids == region_index).nonzero().flatten()
    num_regions = 0 if region_embeds is None else len(region_embeds)
    if len(region_rows) != num_regions:
        raise ValueError(f"{len(region_rows)} <region> placeholders but {num_regions} region embeddings")
    embeds = token_embeds.clone()
    if len(region_rows):
        embeds[region_rows] = region_embeds.to(embeds.dtype)
    start = 0
    for position in image_positions:
        if image_tokens is None:
            raise ValueError("the prompt has an <image> placeholder but no image was given")
        pieces += [embeds[start:position], image_tokens.to(embeds.dtype)]
        sources += [torch.arange(start, position), torch.full((len(image_tokens),), -1)]
        start = position + 1
    pieces.append(embeds[start:])
    sources.append(torch.arange(start, len(ids)))
    return torch.cat(pieces), torch.cat(sources).to(ids.device)


def splice_multimodal(
    input_ids: torch.Tensor,
    embed_tokens: nn.Module,
    *,
    image_tokens: torch.Tensor | None,
    region_embeds: Sequence[torch.Tensor | None] | None,
    cond_ids: torch.Tensor,
    seg_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    image_index: int = -200,
    region_index: int = -300,
) -> MultimodalSequence:
    """Build the LLM input of a batch.

    Args:
        input_ids: ``(B, T)`` token ids with sentinels; padding positions are dropped via
            ``attention_mask`` ``(B, T)`` (1 = real token) when given.
        embed_tokens: the LLM's input embedding.
        image_tokens: ``(B, N, H)`` LLM tokens of each sample's image, or None for text-only batches.
        region_embeds: per sample ``(R_b, H)`` region embeddings in ``<region>`` order, or None.
        cond_ids, seg_ids, labels: ``(B, T)`` per-token annotations, expanded with the embeddings
            (image rows get -1, and ``IGNORE_INDEX`` labels).
    """
    batch = input_ids.shape[0]
    rows, sources = [], []
    for b in range(batch):
        keep = slice(None) if attention_mask is None else attention_mask[b].bool()
        ids = input_ids[b][keep]
        token_embeds = embed_tokens(ids.clamp(min=0))
        embeds, source = _splice_one(
            ids,
            token_embeds,
            None if image_tokens is None else image_tokens[b],
            None if region_embeds is None else region_embeds[b],
            image_index,
            region_index,
        )
        rows.append(embeds)
        sources.append((source, keep))
    length = max(len(r) for r in rows)
    hidden = rows[0].shape[-1]
    device = input_ids.device
    out = MultimodalSequence(
        inputs_embeds=rows[0].new_zeros(batch, length, hidden),
        attention_mask=torch.zeros(batch, length, dtype=torch.long, device=device),
        cond_ids=torch.full((batch, length), -1, dtype=torch.long, device=device),
        seg_ids=torch.full((batch, length), -1, dtype=torch.long, device=device),
        image_mask=torch.zeros(batch, length, dtype=torch.bool, device=device),
        labels=None
        if labels is None
        else torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=device),
    )
    for b, (embeds, (source, keep)) in enumerate(zip(rows, sources, strict=True)):
        n, text = len(embeds), source >= 0
        out.inputs_embeds[b, :n] = embeds
        out.attention_mask[b, :n] = 1
        out.image_mask[b, :n] = ~text
        for full, spliced in ((cond_ids, out.cond_ids), (seg_ids, out.seg_ids), (labels, out.labels)):
            if full is not None:
                spliced[b, :n][text] = full[b][keep][source[text]]
    return out


def gather_condition_embeddings(projected: torch.Tensor, cond_ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``projected`` ``(L, D)`` over each condition span: ``(C, D)``.

    ``cond_ids`` ``(L,)`` numbers the spans 0..C-1 (-1 elsewhere). Averaging happens *after* the
    projection, as in the release.
    """
    count = int(cond_ids.max().item()) + 1 if cond_ids.numel() else 0
    if count <= 0:
        return projected.new_zeros(0, projected.shape[-1])
    one_hot = (cond_ids.unsqueeze(0) == torch.arange(count, device=cond_ids.device).unsqueeze(1)).to(
        projected.dtype
    )
    sizes = one_hot.sum(1, keepdim=True)
    if (sizes == 0).any():
        missing = (sizes.flatten() == 0).nonzero().flatten().tolist()
        raise ValueError(f"condition ids must be contiguous from 0; missing {missing}")
    return (one_hot @ projected) / sizes


def gather_seg_embeddings(projected: torch.Tensor, seg_ids: torch.Tensor) -> torch.Tensor:
    """Rows of ``projected`` ``(L, D)`` at ``<SEG>`` positions, ordered by their seg index: ``(S, D)``."""
    positions = (seg_ids >= 0).nonzero().flatten()
    order = seg_ids[positions].argsort()
    return projected[positions[order]]
