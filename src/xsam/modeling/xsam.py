"""X-SAM: one multimodal LLM whose ``<SEG>`` and phrase states drive a Mask2Former-style segmentor.

Data flow of one image (REFERENCE §1.1)::

    image ─ SigLIP ─ image_projector ───────────────┐
          └ SAM ViT ┬ seg_projector ─────────────────┼─> [image tokens] ┐
                    └ connector ─ pixel_decoder ─┐   │                  │
    prompt ────────────────────────────────────────────── tokens ───────┴─> LLM ─ llm_projector
                                                 │   conditions (<p>…</p> means), <SEG> states ─┘
                                                 └─> mask_decoder(+<SEG>) ─ class_head(conditions)

The model takes tensors and returns dataclasses of tensors; prompts, preprocessing and
post-processing live outside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import Cache, DynamicCache

from ..config import XSamConfig
from .class_head import ClosedSetClassHead, OpenVocabularyClassHead
from .connector import SegmentationConnector
from .image_encoder import ImageEncoder
from .language_model import build_language_model
from .mask_decoder import MaskDecoder
from .multimodal import (
    IGNORE_INDEX,
    MultimodalSequence,
    gather_condition_embeddings,
    gather_seg_embeddings,
    phrase_ids,
    seg_token_ids,
    splice_multimodal,
)
from .pixel_decoder import PixelDecoder
from .projector import MLPProjector
from .region_sampler import sample_region_features
from .segmentation_encoder import SegmentationEncoder
from .serialization import (
    CONFIG_NAME,
    DEFAULT_MAX_SHARD_BYTES,
    assign_state,
    check_keys,
    iter_tensors,
    tied_aliases,
    weight_files,
    write_directory,
)

FORMAT_KEY = "xsam_format"
FORMAT_VERSION = 1
DEFAULT_MODEL = "default"
"""The name that :meth:`XSamModel.from_pretrained` resolves to the bundled default model."""


def bundled_model_directory() -> Path:
    """The folder of the default model shipped inside the package (``xsam/assets/default-model``)."""
    return Path(__file__).resolve().parents[1] / "assets" / "default-model"


def resolve_model_directory(name_or_path: str | Path) -> Path:
    """``"default"`` (unless a folder of that name exists here) is the bundled model; anything else
    is a path.

    Raises:
        FileNotFoundError: ``"default"`` was asked for but this installation lacks the bundled model.
    """
    path = Path(name_or_path)
    if str(name_or_path) != DEFAULT_MODEL or path.exists():
        return path
    bundled = bundled_model_directory()
    if not (bundled / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing from this installation ({bundled}); "
            "reproduce it with scripts/train_default_model.sh"
        )
    return bundled


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


class XSamModel(nn.Module):
    """The X-SAM network built from an :class:`~xsam.config.XSamConfig` (random weights).

    Use :func:`xsam.from_pretrained` / :meth:`from_pretrained` to load weights. ``tokenizer`` is an
    optional attached tokenizer, saved with the model.
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
        self.tokenizer = None

    # -------------------------------------------------------------------------------- save / load
    def save_pretrained(
        self, directory: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    ) -> None:
        """Write ``config.json``, ``model.safetensors`` (sharded above ``max_shard_bytes``) and the
        attached tokenizer, if any. Tied duplicates are stored once."""
        aliases = tied_aliases(self)
        state = {k: v for k, v in self.state_dict().items() if k not in aliases}
        config = {FORMAT_KEY: FORMAT_VERSION, **self.config.to_dict()}
        tokenizer = self.tokenizer
        writer = None if tokenizer is None else (lambda folder: tokenizer.save_pretrained(str(folder)))
        write_directory(directory, state, config, max_shard_bytes=max_shard_bytes, extra_writer=writer)

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
        ``strict=False``. The tokenizer is attached when present.
        """
        if dtype is None and str(directory) == DEFAULT_MODEL:
            dtype = torch.float32  # 16-bit storage only keeps the package small
        directory = resolve_model_directory(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: not an xsam-torch model directory")
        data = json.loads(config_path.read_text())
        if data.pop(FORMAT_KEY, None) != FORMAT_VERSION:
            raise ValueError(f"{config_path} is not an xsam-torch config (format {FORMAT_VERSION} expected)")
        config = XSamConfig.from_dict(data)
        if allow_missing:
            model = cls(config)
        else:
            with init_empty_weights(include_buffers=False):
                model = cls(config)
        aliases = tied_aliases(model)
        expected = set(model.state_dict()) - set(aliases)
        state = dict(iter_tensors(weight_files(directory), dtype=dtype, device=device))
        present = expected if not allow_missing else expected & set(state)
        check_keys(present, set(state), strict=strict, source=str(directory))
        state = {k: v for k, v in state.items() if k in expected}
        if allow_missing:
            model.load_state_dict(state, strict=False)
        else:
            assign_state(model, state, aliases)
        model.to(device)
        if allow_missing and dtype is not None:
            model.to(dtype)
        if (directory / "tokenizer_config.json").is_file():
            from ..tokenizer import load_tokenizer

            model.tokenizer = load_tokenizer(directory, tokens=config.tokens)
        return model.eval()

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

    def _run_language_model(self, sequence: MultimodalSequence, past_key_values: Cache | None) -> Any:
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
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )

    @torch.no_grad()
    def prefill(self, sequence: MultimodalSequence) -> Cache:
        """Run the LLM over a prefix and return its KV cache (for prompts that share the prefix)."""
        # a plain (non-sliding) cache so that it can always be cropped back to the prefix
        cache = DynamicCache()
        self._run_language_model(sequence, cache)
        return cache

    @staticmethod
    def truncate_cache(cache: Cache, length: int) -> None:
        """Drop everything after the first ``length`` positions of ``cache`` (in place)."""
        excess = cache.get_seq_length() - length
        if excess > 0:
            cache.crop(-excess)

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
        hidden = self._run_language_model(sequence, past_key_values).last_hidden_state
        head = self.language_model.get_output_embeddings()
        if labelled_logits_only:
            logits = head(hidden[:, :-1][sequence.labels[:, 1:] != IGNORE_INDEX])
        else:
            logits = head(hidden)
        projected = self.llm_projector(hidden)
        segmentation = None
        if image_features is not None and bool((sequence.seg_ids >= 0).any()):
            segmentation = self._segment_from_states(
                image_features, projected, sequence.cond_ids, sequence.seg_ids, decode_per_seg
            )
        return XSamOutput(logits, hidden, projected, sequence, segmentation)

    def _segment_from_states(
        self,
        features: ImageFeatures,
        projected: torch.Tensor,
        cond_ids: torch.Tensor,
        seg_ids: torch.Tensor,
        decode_per_seg: bool,
    ) -> SegmentationOutput:
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
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        cond_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        sam_pixel_values: torch.Tensor | None = None,
        image_features: ImageFeatures | None = None,
        region_masks: Sequence[torch.Tensor | None] | None = None,
        stop_token_ids: Sequence[int] = (32007,),
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
        if image_features is None and pixel_values is not None:
            image_features = self.encode_image(pixel_values, sam_pixel_values)
        sequence = self.prepare_sequence(
            input_ids,
            cond_ids=cond_ids,
            seg_ids=torch.full_like(input_ids, -1),
            image_features=image_features,
            region_masks=region_masks,
            generator=generator,
        )
        prompt_states, generated, states = self._greedy_decode(
            sequence, stop_token_ids, max_new_tokens, past_key_values
        )
        segmentation = None
        tokens = self.config.tokens
        gen_seg_ids = seg_token_ids(generated, tokens.seg_token_id)
        if image_features is not None and bool((gen_seg_ids >= 0).any()):
            gen_seg_ids = torch.where(gen_seg_ids == gen_seg_ids.max(), 0, -1)
            gen_cond_ids = phrase_ids(generated, tokens.phrase_start_token_id, tokens.phrase_end_token_id)
            all_states = torch.cat([prompt_states, states])
            projected = self.llm_projector(all_states).unsqueeze(0)
            prompt_conds = sequence.cond_ids[0]
            if bool((gen_cond_ids >= 0).any()):
                prompt_conds = torch.full_like(prompt_conds, -1)
            else:
                gen_cond_ids = torch.full_like(gen_cond_ids, -1)
            cond = torch.cat([prompt_conds, gen_cond_ids]).unsqueeze(0)
            seg = torch.cat([torch.full_like(prompt_conds, -1), gen_seg_ids]).unsqueeze(0)
            segmentation = self._segment_from_states(image_features, projected, cond, seg, False)
        return XSamGeneration(token_ids=generated, segmentation=segmentation)

    def _greedy_decode(
        self,
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
        base = self.language_model.base_model
        head = self.language_model.get_output_embeddings()
        embed = self.language_model.get_input_embeddings()
        cache = past_key_values if past_key_values is not None else DynamicCache()
        out = self._run_language_model(sequence, cache)
        prompt_states = out.last_hidden_state[0]
        next_logits = head(out.last_hidden_state[:, -1])
        ids, states = [], []
        for _ in range(max_new_tokens):
            token = next_logits.argmax(-1)
            ids.append(token)
            out = base(
                inputs_embeds=embed(token).unsqueeze(1), past_key_values=out.past_key_values, use_cache=True
            )
            states.append(out.last_hidden_state[0, -1])
            if int(token) in stop_token_ids:
                break
            next_logits = head(out.last_hidden_state[:, -1])
        if not ids:
            return prompt_states, torch.zeros(0, dtype=torch.long), prompt_states[:0]
        return prompt_states, torch.cat(ids), torch.stack(states)
