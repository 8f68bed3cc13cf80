"""X-SAM: one multimodal LLM whose ``<SEG>`` and phrase states drive a Mask2Former-style segmentor.

Data flow of one image::

    image ─ SigLIP ─ image_projector ───────────────┐
          └ SAM ViT ┬ seg_projector ─────────────────┼─> [image tokens] ┐
                    └ connector ─ pixel_decoder ─┐   │                  │
    prompt ────────────────────────────────────────────── tokens ───────┴─> LLM ─ llm_projector
                                                 │   conditions (<p>…</p> means), <SEG> states ─┘
                                                 └─> mask_decoder(+<SEG>) ─ class_head(conditions)

This module is the composition and its forward; the outputs (:mod:`.outputs`), greedy generation
(:mod:`.generation`) and pretrained I/O (:mod:`.pretrained`) live beside it. The model takes tensors
and returns dataclasses of tensors; prompts, tokenizer, preprocessing and post-processing live
outside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Cache

from ..config import XSamConfig
from ..tokens import IGNORE_INDEX
from . import generation, pretrained
from .class_head import ClosedSetClassHead, OpenVocabularyClassHead
from .connector import SegmentationConnector
from .image_encoder import ImageEncoder
from .language_model import build_language_model
from .mask_decoder import MaskDecoder
from .multimodal import (
    MultimodalSequence,
    gather_condition_embeddings,
    gather_seg_embeddings,
    splice_multimodal,
)
from .outputs import ImageFeatures, SegmentationOutput, XSamGeneration, XSamOutput
from .pixel_decoder import PixelDecoder
from .projector import MLPProjector
from .region_sampler import sample_region_features
from .segmentation_encoder import SegmentationEncoder
from .serialization import DEFAULT_MAX_SHARD_BYTES

__all__ = ["ImageFeatures", "SegmentationOutput", "XSamGeneration", "XSamModel", "XSamOutput"]


class XSamModel(nn.Module):
    """The X-SAM network built from an :class:`~xsam.config.XSamConfig` (random weights).

    Use :meth:`from_pretrained` to load weights; ``name_or_path`` then records the directory (where
    the predictor looks for a tokenizer).
    """

    def __init__(self, config: XSamConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        attn = config.attn_implementation
        llm_hidden = config.language_model.hidden_size
        seg_cfg, decoder_dim = config.segmentation_encoder, config.mask_decoder.hidden_dim
        self.image_encoder = ImageEncoder(config.image_encoder, attn_implementation=attn)
        self.image_projector = MLPProjector(
            config.image_encoder.hidden_size, llm_hidden, depth=config.projector_depth
        )
        self.segmentation_encoder = SegmentationEncoder(seg_cfg, attn_implementation=attn)
        shuffle_gain = round(1 / config.seg_projector_downsample**2)
        self.seg_projector = MLPProjector(
            seg_cfg.hidden_size * shuffle_gain,
            llm_hidden,
            depth=config.projector_depth,
            downsample=config.seg_projector_downsample,
        )
        self.connector = SegmentationConnector(
            seg_cfg.hidden_size, config.connector.hidden_dim, config.connector.scale_factors
        )
        strides = [int(seg_cfg.patch_size / s) for s in config.connector.scale_factors]
        self.pixel_decoder = PixelDecoder(config.pixel_decoder, self.connector.out_channels, strides)
        self.mask_decoder = MaskDecoder(config.mask_decoder, config.num_levels)
        self.class_head = OpenVocabularyClassHead(config.mask_decoder)
        has_closed_set = config.mask_decoder.num_closed_set_classes is not None
        self.closed_set_head = ClosedSetClassHead(config.mask_decoder) if has_closed_set else None
        self.language_model = build_language_model(config.language_model, attn_implementation=attn)
        self.llm_projector = MLPProjector(llm_hidden, decoder_dim, depth=config.projector_depth)
        self.name_or_path: str | None = None

    # -------------------------------------------------------------------------------- save / load
    def save_pretrained(
        self, directory: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    ) -> None:
        """Write ``config.json`` and ``model.safetensors`` (sharded above ``max_shard_bytes``); tied
        duplicates are stored once. See :mod:`xsam.modeling.pretrained`."""
        pretrained.save_pretrained(self, directory, max_shard_bytes=max_shard_bytes)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        strict: bool = True,
        allow_missing: bool = False,
    ) -> XSamModel:
        """Load a :meth:`save_pretrained` directory, or ``"default"``: the bundled small model trained
        on the synthetic world (stored in 16 bits, loaded as float32 unless ``dtype`` says otherwise).

        The model is built on the meta device and the weights are assigned as they are read, so memory
        holds one copy. ``dtype`` casts floating weights (default: as stored). Missing keys raise unless
        ``allow_missing`` (e.g. a converted stage-1 or stage-2 checkpoint used to initialise training:
        the absent modules keep their random initialisation); unexpected keys raise unless
        ``strict=False``.
        """
        return pretrained.from_pretrained(
            cls, directory, dtype=dtype, device=device, strict=strict, allow_missing=allow_missing
        )

    # ------------------------------------------------------------------------------------ image side
    def encode_image(self, pixel_values: torch.Tensor, sam_pixel_values: torch.Tensor) -> ImageFeatures:
        """Run both encoders, the projectors, the connector and the pixel decoder.

        ``pixel_values``: ``(B, 3, S, S)`` SigLIP input; ``sam_pixel_values``: ``(B, 3, S', S')`` SAM input.
        """
        image_tokens = self.image_projector(self.image_encoder(pixel_values))
        sam = self.segmentation_encoder(sam_pixel_values)
        seg_tokens = self.seg_projector(sam.projector_input)
        side = int(seg_tokens.shape[1] ** 0.5)
        pixel = self.pixel_decoder(self.connector(sam.connector_inputs))
        return ImageFeatures(
            llm_tokens=torch.cat([image_tokens, seg_tokens], dim=1),
            seg_token_map=seg_tokens.unflatten(1, (side, side)),
            mask_features=pixel.mask_features,
            multi_scale_features=pixel.multi_scale_features,
        )

    def region_embeddings(
        self,
        features: ImageFeatures,
        region_masks: Sequence[torch.Tensor | None],
        *,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor | None]:
        """Per sample, ``(R, S', S')`` prompt masks on the SAM canvas -> ``(R, H)`` region embeddings."""
        return [
            None
            if masks is None
            else sample_region_features(
                features.seg_token_map[b],
                masks,
                num_points=self.config.sampler.num_points,
                generator=generator,
            )
            for b, masks in enumerate(region_masks)
        ]

    # ------------------------------------------------------------------------------- segmentor side
    def decode(
        self,
        features: ImageFeatures,
        image_index: torch.Tensor,
        seg_embeddings: torch.Tensor,
        condition_embeddings: torch.Tensor,
        condition_mask: torch.Tensor,
    ) -> SegmentationOutput:
        """Run the mask decoder for ``N`` decoder samples, each conditioned on one ``<SEG>`` embedding
        ``(N, D)`` and classified against its condition list ``(N, C, D)``."""
        multi_scale = [f[image_index] for f in features.multi_scale_features]
        decoded = self.mask_decoder(multi_scale, features.mask_features[image_index], seg_embeddings)
        class_logits = self.class_head(decoded.query_states, condition_embeddings, condition_mask)
        return SegmentationOutput(
            class_logits=class_logits,
            mask_logits=decoded.mask_logits,
            condition_embeddings=condition_embeddings,
            condition_mask=condition_mask,
            seg_embeddings=seg_embeddings,
            image_index=image_index,
        )

    def segment_closed_set(self, sam_pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-1 segmentor without the LLM.

        Returns ``class_logits`` ``(P, B, Q, K + 1)`` and ``mask_logits`` ``(P, B, Q, h, w)``.
        """
        self._require_closed_set_head()
        sam = self.segmentation_encoder(sam_pixel_values)
        pixel = self.pixel_decoder(self.connector(sam.connector_inputs))
        return self.decode_closed_set(pixel.multi_scale_features, pixel.mask_features)

    def decode_closed_set(
        self, multi_scale_features: Sequence[torch.Tensor], mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The closed-set mask decoder and head on pixel-decoder outputs (``ImageFeatures`` fields);
        returns what :meth:`segment_closed_set` does."""
        head = self._require_closed_set_head()
        decoded = self.mask_decoder(list(multi_scale_features), mask_features)
        return head(decoded.query_states), decoded.mask_logits

    def _require_closed_set_head(self) -> ClosedSetClassHead:
        if self.closed_set_head is None:
            raise RuntimeError(
                "this model has no closed-set head (mask_decoder.num_closed_set_classes is None); "
                "stage-1 (seg_finetune) models have one"
            )
        return self.closed_set_head

    # ------------------------------------------------------------------------------------ LLM side
    def prepare_sequence(
        self,
        input_ids: torch.Tensor,
        *,
        cond_ids: torch.Tensor,
        seg_ids: torch.Tensor,
        image_features: ImageFeatures | None,
        region_masks: Sequence[torch.Tensor | None] | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MultimodalSequence:
        """Embed the tokens and splice in the image tokens and region embeddings (see :meth:`forward`)."""
        regions = None
        if region_masks is not None:
            if image_features is None:
                raise ValueError("region prompts need an image")
            regions = self.region_embeddings(image_features, region_masks, generator=generator)
        return splice_multimodal(
            input_ids,
            self.language_model.get_input_embeddings(),
            image_tokens=None if image_features is None else image_features.llm_tokens,
            region_embeds=regions,
            cond_ids=cond_ids,
            seg_ids=seg_ids,
            attention_mask=attention_mask,
            labels=labels,
            image_index=self.config.tokens.image_token_index,
            region_index=self.config.tokens.region_token_index,
        )

    def run_language_model(self, sequence: MultimodalSequence, past_key_values: Cache | None) -> Any:
        """The LLM's base model on spliced embeddings; last-layer states are after the final norm.

        A batch without padding gets no attention mask, as in the official evaluation (plain causal
        attention); with a cache, padding is not supported.
        """
        padded = not bool(sequence.attention_mask.all())
        if padded and past_key_values is not None:
            raise ValueError("a cached prefix cannot be combined with padded batches")
        return self.language_model.base_model(
            inputs_embeds=sequence.inputs_embeds,
            attention_mask=sequence.attention_mask if padded else None,
            cache=past_key_values,
            use_cache=past_key_values is not None,
        )

    def prefill(self, sequence: MultimodalSequence) -> Cache:
        """The LLM's KV cache of a prefix (see :func:`xsam.modeling.generation.prefill`)."""
        return generation.prefill(self, sequence)

    @staticmethod
    def truncate_cache(cache: Cache, length: int) -> None:
        """Drop everything after the first ``length`` positions of ``cache`` (in place)."""
        generation.truncate_cache(cache, length)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cond_ids: torch.Tensor,
        seg_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        sam_pixel_values: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        region_masks: Sequence[torch.Tensor | None] | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decode_per_seg: bool = False,
        generator: torch.Generator | None = None,
        past_key_values: Cache | None = None,
        labelled_logits_only: bool = False,
    ) -> XSamOutput:
        """Teacher-forced forward over a batch of prompts (+ answers).

        Args:
            input_ids, cond_ids, seg_ids: ``(B, T)``; ``input_ids`` holds the ``<image>``/``<region>``
                sentinels (see :mod:`xsam.modeling.multimodal`).
            pixel_values, sam_pixel_values: the images, or ``image_features`` from :meth:`encode_image`.
            region_masks: per sample ``(R, S', S')`` visual-prompt masks for its ``<region>`` tokens.
            attention_mask: ``(B, T)``, 1 on real tokens (padding may sit anywhere).
            labels: ``(B, T)`` LM targets, carried through the splice into ``sequence.labels``.
            decode_per_seg: referring/reasoning layout: every ``<SEG>`` becomes its own decoder sample,
                classified against *all* conditions of the batch (in-batch contrastive classes).
                Otherwise each sample has exactly one ``<SEG>`` and its own conditions.
            generator: seeds the region sampler's subset of prompt pixels.
            past_key_values: the LLM cache of a prefix (e.g. ``[<s>, <|user|>, image tokens]`` from
                :meth:`prefill`); ``input_ids`` then hold only what follows it, and the cache is
                extended in place (crop it back to reuse the prefix).
            labelled_logits_only: apply the LM head only where ``labels`` supervise the next token
                (training: most of a sequence is image tokens, and a 32k-way head over them costs more
                than a small LLM's layers). Requires ``labels``.
        """
        if labelled_logits_only and labels is None:
            raise ValueError("labelled_logits_only needs labels")
        if image_features is None and pixel_values is not None:
            image_features = self.encode_image(pixel_values, sam_pixel_values)
        sequence = self.prepare_sequence(
            input_ids,
            cond_ids=cond_ids,
            seg_ids=seg_ids,
            image_features=image_features,
            region_masks=region_masks,
            attention_mask=attention_mask,
            labels=labels,
            generator=generator,
        )
        hidden = self.run_language_model(sequence, past_key_values).last_hidden_state
        head = self.language_model.get_output_embeddings()
        if labelled_logits_only:
            logits = head(hidden[:, :-1][sequence.labels[:, 1:] != IGNORE_INDEX])
        else:
            logits = head(hidden)
        projected = self.llm_projector(hidden)
        segmentation = None
        if image_features is not None and bool((sequence.seg_ids >= 0).any()):
            segmentation = self.segment_from_states(
                image_features, projected, sequence.cond_ids, sequence.seg_ids, decode_per_seg=decode_per_seg
            )
        return XSamOutput(logits, hidden, projected, sequence, segmentation)

    def segment_from_states(
        self,
        features: ImageFeatures,
        projected: torch.Tensor,
        cond_ids: torch.Tensor,
        seg_ids: torch.Tensor,
        *,
        decode_per_seg: bool,
    ) -> SegmentationOutput:
        """Decode masks from projected LLM states ``(B, L, D)``: conditions are the means over the
        ``cond_ids`` spans, ``<SEG>`` states the rows at ``seg_ids`` (see :meth:`forward` for the two
        layouts)."""
        conditions = [gather_condition_embeddings(p, c) for p, c in zip(projected, cond_ids, strict=True)]
        segs = [gather_seg_embeddings(p, s) for p, s in zip(projected, seg_ids, strict=True)]
        if decode_per_seg:
            image_index = torch.cat([torch.full((len(s),), b) for b, s in enumerate(segs)])
            every = torch.cat(conditions)
            seg_embeddings = torch.cat(segs)
            class_embeddings = every.unsqueeze(0).expand(len(seg_embeddings), -1, -1)
            class_mask = torch.ones(class_embeddings.shape[:2], dtype=torch.bool)
        else:
            counts = [len(s) for s in segs]
            if any(n != 1 for n in counts):
                raise ValueError(f"each sample needs exactly one <SEG> in this layout, got counts {counts}")
            image_index = torch.arange(len(segs))
            seg_embeddings = torch.cat(segs)
            class_embeddings = nn.utils.rnn.pad_sequence(conditions, batch_first=True)
            lengths = torch.tensor([len(c) for c in conditions])
            class_mask = torch.arange(class_embeddings.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        device = projected.device
        return self.decode(
            features, image_index.to(device), seg_embeddings, class_embeddings, class_mask.to(device)
        )

    # ------------------------------------------------------------------------------------ generation
    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        cond_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        sam_pixel_values: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        region_masks: Sequence[torch.Tensor | None] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        max_new_tokens: int = 512,
        generator: torch.Generator | None = None,
        past_key_values: Cache | None = None,
    ) -> XSamGeneration:
        """Greedy generation for one sample (see :func:`xsam.modeling.generation.generate`); stops at
        ``stop_token_ids`` (default: the config's end token)."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_image(pixel_values, sam_pixel_values)
        if stop_token_ids is None:
            stop_token_ids = (self.config.tokens.end_token_id,)
        return generation.generate(
            self,
            input_ids,
            cond_ids=cond_ids,
            image_features=image_features,
            region_masks=region_masks,
            stop_token_ids=stop_token_ids,
            max_new_tokens=max_new_tokens,
            generator=generator,
            past_key_values=past_key_values,
        )
