"""What the X-SAM network returns: dataclasses of tensors, no task logic."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .multimodal import MultimodalSequence


@dataclass
class ImageFeatures:
    """Everything X-SAM computes from the image alone (what a predictor caches per image).

    ``llm_tokens`` ``(B, N, H)``: SigLIP tokens then SAM tokens, in LLM space. ``seg_token_map``
    ``(B, h, w, H)``: the SAM tokens as a map, sampled by visual prompts. ``mask_features``
    ``(B, D, H/8, W/8)`` and ``multi_scale_features`` (coarse -> fine, ``(B, D, h_l, w_l)``) feed the
    mask decoder.
    """

    llm_tokens: torch.Tensor
    seg_token_map: torch.Tensor
    mask_features: torch.Tensor
    multi_scale_features: list[torch.Tensor]


@dataclass
class SegmentationOutput:
    """Decoder results for ``N`` decoder samples over ``P = num_layers + 1`` prediction stages.

    ``class_logits`` ``(P, N, Q, C + 1)`` (last column = background), ``mask_logits``
    ``(P, N, Q, H/8, W/8)``, ``condition_embeddings`` ``(N, C, D)`` with ``condition_mask`` ``(N, C)``,
    ``seg_embeddings`` ``(N, D)``, ``image_index`` ``(N,)``: the image each decoder sample looks at.
    The closed-set segmentor (:meth:`XSamModel.decode_closed_set`) has no conditions nor ``<SEG>``:
    its outputs leave the last four None.
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    condition_embeddings: torch.Tensor | None = None
    condition_mask: torch.Tensor | None = None
    seg_embeddings: torch.Tensor | None = None
    image_index: torch.Tensor | None = None


@dataclass
class XSamOutput:
    """Teacher-forced forward. ``logits`` ``(B, L, V)`` and ``hidden_states`` ``(B, L, H)`` (last layer,
    after the final norm) are over the spliced sequence ``sequence``; ``projected`` ``(B, L, D)`` is the
    llm_projector output. ``segmentation`` is None when the batch holds no ``<SEG>`` (chat).

    With ``labelled_logits_only``, ``logits`` is ``(N, V)`` instead: only the ``N`` positions whose next
    token is supervised (``sequence.labels[:, 1:] != -100``), in row-major order."""

    logits: torch.Tensor
    hidden_states: torch.Tensor
    projected: torch.Tensor
    sequence: MultimodalSequence
    segmentation: SegmentationOutput | None


@dataclass
class XSamGeneration:
    """Greedy generation of one sample: ``token_ids`` ``(T,)`` generated ids (stop token included),
    ``segmentation`` from the conditions/SEGs found in the prompt or the generated text."""

    token_ids: torch.Tensor
    segmentation: SegmentationOutput | None
