"""Generation with the X-SAM network: prefix prefill, cache cropping and greedy decoding.

Generation is a plain greedy loop on the language model's KV cache that keeps the last-layer state of
every generated token: GCG's phrases and ``<SEG>`` are read from those states, so the library's
``generate`` (which returns tokens only) does not fit. The stop tokens come from the caller (the
config's ``tokens.end_token_id`` in practice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import Cache, DynamicCache

from ..tokens import phrase_ids, seg_token_ids
from .multimodal import MultimodalSequence
from .outputs import ImageFeatures, SegmentationOutput, XSamGeneration

if TYPE_CHECKING:
    from .xsam import XSamModel


@torch.no_grad()
def prefill(model: XSamModel, sequence: MultimodalSequence) -> Cache:
    """Run the LLM over a prefix and return its KV cache (for prompts that share the prefix)."""
    # a plain (non-sliding) cache so that it can always be cropped back to the prefix
    cache = DynamicCache()
    model.run_language_model(sequence, cache)
    return cache


def truncate_cache(cache: Cache, length: int) -> None:
    """Drop everything after the first ``length`` positions of ``cache`` (in place)."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)


@torch.no_grad()
def generate(
    model: XSamModel,
    input_ids: torch.Tensor,
    *,
    cond_ids: torch.Tensor,
    image_features: ImageFeatures | None,
    region_masks: Sequence[torch.Tensor | None] | None = None,
    stop_token_ids: Sequence[int],
    max_new_tokens: int = 512,
    generator: torch.Generator | None = None,
    past_key_values: Cache | None = None,
) -> XSamGeneration:
    """Greedy generation for one sample (``input_ids`` ``(1, T)``), collecting last-layer states.

    Conditions come from the generated ``<p>…</p>`` spans when there are any (GCG), otherwise from
    the prompt's; ``<SEG>`` positions are searched in the generated tokens only. The layout has
    one ``<SEG>`` per sample; if the model generates several (an untrained or degenerate answer),
    the last one decodes, the one that has read every generated phrase.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("generate() handles one sample at a time")
    sequence = model.prepare_sequence(
        input_ids,
        cond_ids=cond_ids,
        seg_ids=torch.full_like(input_ids, -1),
        image_features=image_features,
        region_masks=region_masks,
        generator=generator,
    )
    prompt_states, generated, states = greedy_decode(
        model, sequence, stop_token_ids, max_new_tokens, past_key_values
    )
    segmentation = None
    if image_features is not None:
        segmentation = _segment_generated(model, image_features, sequence, prompt_states, generated, states)
    return XSamGeneration(token_ids=generated, segmentation=segmentation)


def _segment_generated(
    model: XSamModel,
    features: ImageFeatures,
    sequence: MultimodalSequence,
    prompt_states: torch.Tensor,
    generated: torch.Tensor,
    states: torch.Tensor,
) -> SegmentationOutput | None:
    """Decode the last generated ``<SEG>`` against the generated phrases (or the prompt's)."""
    tokens = model.config.tokens
    gen_seg_ids = seg_token_ids(generated, tokens.seg_token_id)
    if not bool((gen_seg_ids >= 0).any()):
        return None
    gen_seg_ids = torch.where(gen_seg_ids == gen_seg_ids.max(), 0, -1)
    gen_cond_ids = phrase_ids(generated, tokens.phrase_start_token_id, tokens.phrase_end_token_id)
    projected = model.llm_projector(torch.cat([prompt_states, states])).unsqueeze(0)
    prompt_conds = sequence.cond_ids[0]
    if bool((gen_cond_ids >= 0).any()):
        prompt_conds = torch.full_like(prompt_conds, -1)
    else:
        gen_cond_ids = torch.full_like(gen_cond_ids, -1)
    cond = torch.cat([prompt_conds, gen_cond_ids]).unsqueeze(0)
    seg = torch.cat([torch.full_like(prompt_conds, -1), gen_seg_ids]).unsqueeze(0)
    return model.segment_from_states(features, projected, cond, seg, decode_per_seg=False)


def greedy_decode(
    model: XSamModel,
    sequence: MultimodalSequence,
    stop_token_ids: Sequence[int],
    max_new_tokens: int,
    past_key_values: Cache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefill ``sequence`` and decode greedily.

    Returns the prompt's last-layer states ``(L, H)``, the generated ids ``(T,)`` and the state of
    each generated token ``(T, H)``: token ``k`` is read when it is fed back (position ``L + k``), so
    the final (stop) token gets one too.
    """
    language_model = model.language_model
    head = language_model.get_output_embeddings()
    embed = language_model.get_input_embeddings()
    cache = past_key_values if past_key_values is not None else DynamicCache()
    out = model.run_language_model(sequence, cache)
    prompt_states = out.last_hidden_state[0]
    next_logits = head(out.last_hidden_state[:, -1])
    ids, states = [], []
    for _ in range(max_new_tokens):
        token = next_logits.argmax(-1)
        ids.append(token)
        out = language_model.base_model(
            inputs_embeds=embed(token).unsqueeze(1), cache=out.cache, use_cache=True
        )
        states.append(out.last_hidden_state[0, -1])
        if int(token) in stop_token_ids:
            break
        next_logits = head(out.last_hidden_state[:, -1])
    if not ids:
        return prompt_states, torch.zeros(0, dtype=torch.long), prompt_states[:0]
    return prompt_states, torch.cat(ids), torch.stack(states)
