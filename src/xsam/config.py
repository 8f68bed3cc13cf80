"""Typed, nested configuration of the X-SAM network.

Every size, resolution and layer selection lives here, so small presets can shrink the whole network
(images included) while keeping the released model's structure. ``XSamConfig.official()`` is the
released model (SigLIP2-so400m + SAM ViT-L + Phi-3-mini-4k); ``XSamConfig.tiny()`` runs in seconds on
a CPU and is what the tests use.

Configs round-trip through ``to_dict`` / ``from_dict`` (the ``config.json`` of a saved model); unknown
keys are an error so a typo never silently falls back to a default, and every value is checked
against its field's type hint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIL_BILINEAR = 2

_ConfigT = TypeVar("_ConfigT")

PRESETS = ("official", "small", "tiny")
"""The names :meth:`XSamConfig.preset` takes."""


@dataclass
class ImageEncoderConfig:
    """SigLIP vision tower (``transformers.SiglipVisionModel``) and its image preprocessing.

    The LLM receives ``hidden_states[select_layer]`` (the penultimate layer in the release), all
    ``(image_size // patch_size) ** 2`` tokens (no CLS token to drop).
    """

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    image_size: int = 384
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    use_head: bool = True
    select_layer: int = -2
    # Preprocessing (from the checkpoint's preprocessor_config.json).
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resample: int = PIL_BILINEAR
    pad_to_square: bool = True

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class SegmentationEncoderConfig:
    """SAM ViT image encoder (``transformers.SamVisionModel``) and its preprocessing.

    ``hidden_states[i]`` is the output of block ``i`` (``[0]`` = patch + position embedding). The seg
    projector reads ``hidden_states[projector_layer]``; the connector reads ``connector_layers``.
    """

    hidden_size: int = 1024
    mlp_dim: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (5, 11, 17, 23)
    output_channels: int = 256
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    projector_layer: int = -2
    connector_layers: tuple[int, ...] = (12, 18, 24)
    # Preprocessing: longest side -> image_size, ImageNet normalisation, zero pad bottom/right.
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    resample: int = PIL_BILINEAR

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class LanguageModelConfig:
    """Any ``AutoModelForCausalLM``: ``hf_config`` is its ``config.json`` (``model_type`` picks the class).

    ``hf_config["vocab_size"]`` is the size after the X-SAM special tokens were added (32014 for Phi-3).
    """

    hf_config: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return int(self.hf_config["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.hf_config["vocab_size"])


@dataclass
class TokenConfig:
    """Special tokens. ``<image>`` and ``<region>`` are placeholders mapped to negative sentinel ids;
    ``end_token`` closes every answer of the chat template and stops generation."""

    seg_token: str = "<SEG>"
    phrase_start_token: str = "<p>"
    phrase_end_token: str = "</p>"
    image_placeholder: str = "<image>"
    region_placeholder: str = "<region>"
    image_token_index: int = -200
    region_token_index: int = -300
    seg_token_id: int = 32011
    phrase_start_token_id: int = 32012
    phrase_end_token_id: int = 32013
    end_token: str = "<|end|>"
    end_token_id: int = 32007

    @property
    def added_tokens(self) -> list[str]:
        return [self.seg_token, self.phrase_start_token, self.phrase_end_token]


@dataclass
class ConnectorConfig:
    """Single-scale SAM features -> strides 8/16/32 (one conv stack + pixel shuffle per level)."""

    hidden_dim: int = 512
    scale_factors: tuple[float, ...] = (2.0, 1.0, 0.5)


@dataclass
class PixelDecoderConfig:
    """Mask2Former multi-scale deformable-attention pixel decoder (strides 32/16/8 + one FPN level)."""

    hidden_dim: int = 256
    mask_dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 1024
    common_stride: int = 4


@dataclass
class MaskDecoderConfig:
    """Masked-attention transformer decoder with the open-vocabulary (cosine) class head."""

    hidden_dim: int = 256
    num_queries: int = 200
    num_layers: int = 9
    num_heads: int = 8
    ffn_dim: int = 2048
    logit_scale_init: float = math.log(1 / 0.07)
    # Stage 1 trains a closed-set head (133 COCO panoptic classes + no-object) instead of the LLM.
    num_closed_set_classes: int | None = None


@dataclass
class SamplerConfig:
    """Naive region sampler: max-pool of ``num_points`` bilinear samples of the seg-projector map."""

    num_points: int = 256


_OFFICIAL_PHI3 = {
    "model_type": "phi3",
    "architectures": ["Phi3ForCausalLM"],
    "vocab_size": 32014,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "original_max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "sliding_window": 2047,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 32000,
    "pad_token_id": 32000,
    "initializer_range": 0.02,
}


@dataclass
class XSamConfig:
    """The whole X-SAM network. Nested parts are plain dataclasses; see each for its fields."""

    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    segmentation_encoder: SegmentationEncoderConfig = field(default_factory=SegmentationEncoderConfig)
    language_model: LanguageModelConfig = field(
        default_factory=lambda: LanguageModelConfig(dict(_OFFICIAL_PHI3))
    )
    tokens: TokenConfig = field(default_factory=TokenConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    mask_decoder: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    projector_depth: int = 2
    seg_projector_downsample: float = 0.5
    # "sdpa" (default), "eager", or any other attention implementation transformers accepts.
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str) -> XSamConfig:
        """The preset called ``name``: one of :data:`PRESETS` (``official``, ``small``, ``tiny``).

        Raises:
            ValueError: unknown name; the message lists the valid ones.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown config preset {name!r}; choose from {', '.join(PRESETS)}")
        return getattr(cls, name)()

    @classmethod
    def official(cls) -> XSamConfig:
        """The released X-SAM: SigLIP2-so400m-p14-384, SAM ViT-L at 1024, Phi-3-mini-4k (vocab 32014)."""
        return cls()

    @classmethod
    def tiny(cls) -> XSamConfig:
        """A structurally faithful toy model (~2.5 M parameters + the 32014-row embedding) for tests.

        SigLIP sees 56 px (16 tokens); SAM sees 128 px (8x8 grid, 4 blocks); masks come out at 16x16,
        i.e. 1/8 of the SAM canvas as in the release.
        """
        llm = dict(_OFFICIAL_PHI3)
        llm.update(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            original_max_position_embeddings=512,
            sliding_window=None,
        )
        return cls(
            image_encoder=ImageEncoderConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=3,
                num_attention_heads=2,
                image_size=56,
                patch_size=14,
            ),
            segmentation_encoder=SegmentationEncoderConfig(
                hidden_size=32,
                mlp_dim=64,
                num_hidden_layers=4,
                num_attention_heads=2,
                image_size=128,
                patch_size=16,
                window_size=4,
                global_attn_indexes=(1, 3),
                output_channels=16,
                connector_layers=(2, 3, 4),
            ),
            language_model=LanguageModelConfig(llm),
            connector=ConnectorConfig(hidden_dim=16),
            pixel_decoder=PixelDecoderConfig(
                hidden_dim=32, mask_dim=32, num_layers=2, num_heads=4, num_points=2, ffn_dim=64
            ),
            mask_decoder=MaskDecoderConfig(
                hidden_dim=32, num_queries=16, num_layers=9, num_heads=4, ffn_dim=64
            ),
            sampler=SamplerConfig(num_points=16),
        )

    @classmethod
    def small(cls) -> XSamConfig:
        """The bundled default model's architecture: the released structure at CPU-trainable widths.

        SigLIP sees 112 px (8x8 = 64 tokens); SAM sees 256 px with 8 px patches (32x32 grid, 4 blocks),
        so masks come out at 64x64 (1/4 of the canvas, finer than the release's 1/8 to resolve small
        shapes); the LLM is a 4-layer Phi-3 of width 192 over the full 32014-token vocabulary.
        """
        llm = dict(_OFFICIAL_PHI3)
        llm.update(
            hidden_size=192,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=3,
            num_key_value_heads=3,
            max_position_embeddings=1024,
            original_max_position_embeddings=1024,
            sliding_window=None,
        )
        return cls(
            image_encoder=ImageEncoderConfig(
                hidden_size=96,
                intermediate_size=192,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=112,
                patch_size=14,
            ),
            segmentation_encoder=SegmentationEncoderConfig(
                hidden_size=96,
                mlp_dim=192,
                num_hidden_layers=4,
                num_attention_heads=3,
                image_size=256,
                patch_size=8,
                window_size=8,
                global_attn_indexes=(1, 3),
                output_channels=64,
                connector_layers=(2, 3, 4),
            ),
            language_model=LanguageModelConfig(llm),
            connector=ConnectorConfig(hidden_dim=64),
            pixel_decoder=PixelDecoderConfig(
                hidden_dim=64, mask_dim=64, num_layers=2, num_heads=4, num_points=4, ffn_dim=128
            ),
            mask_decoder=MaskDecoderConfig(
                hidden_dim=64, num_queries=32, num_layers=6, num_heads=4, ffn_dim=128
            ),
            sampler=SamplerConfig(num_points=64),
        )

    # --------------------------------------------------------------------------------------- checking
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        seg = self.segmentation_encoder
        if len(self.connector.scale_factors) != len(seg.connector_layers):
            raise ValueError(
                f"connector.scale_factors {self.connector.scale_factors} and "
                f"segmentation_encoder.connector_layers {seg.connector_layers} must have the same length"
            )
        for layer in seg.connector_layers:
            if not 0 <= layer <= seg.num_hidden_layers:
                raise ValueError(f"connector layer {layer} is outside 0..{seg.num_hidden_layers}")
        if seg.image_size % seg.patch_size:
            raise ValueError("segmentation_encoder.image_size must be a multiple of patch_size")
        if self.pixel_decoder.mask_dim != self.mask_decoder.hidden_dim:
            raise ValueError("pixel_decoder.mask_dim must equal mask_decoder.hidden_dim")
        if self.pixel_decoder.hidden_dim != self.mask_decoder.hidden_dim:
            raise ValueError("pixel_decoder.hidden_dim must equal mask_decoder.hidden_dim")
        if "model_type" not in self.language_model.hf_config:
            raise ValueError("language_model.hf_config needs a 'model_type'")

    @property
    def num_levels(self) -> int:
        return len(self.connector.scale_factors)

    @property
    def num_image_tokens(self) -> int:
        """Embeddings one ``<image>`` placeholder expands to: SigLIP tokens then SAM tokens."""
        return self.image_encoder.num_tokens + self.num_seg_tokens

    @property
    def num_seg_tokens(self) -> int:
        side = self.segmentation_encoder.grid_size * self.seg_projector_downsample
        return math.ceil(side) ** 2

    @property
    def mask_size(self) -> int:
        """Side of the mask logits: the finest connector level (stride 8 of the SAM canvas)."""
        return int(self.segmentation_encoder.grid_size * max(self.connector.scale_factors))

    # ---------------------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return _to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XSamConfig:
        """The inverse of :meth:`to_dict` (JSON lists become the tuples the fields hold).

        Raises:
            ValueError: an unknown key, or a value whose type does not fit the field's type hint; the
                message names it as ``XSamConfig.<part>.<field>`` and says what was expected.
        """
        return _from_dict(cls, data, "XSamConfig")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> XSamConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(item) for item in value]
    return value


def _from_dict(cls: type[_ConfigT], data: Any, where: str) -> _ConfigT:
    """Build dataclass ``cls`` from JSON data, checking every value against the field's type hint.

    Raises:
        ValueError: an unknown key, or a value of the wrong type; the message names ``where.field``
            and what was expected.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of {cls.__name__} fields, got {_describe(data)}")
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}")
    hints = get_type_hints(cls)
    kwargs = {name: _from_json(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _from_json(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the type ``hint`` names: JSON lists become tuples, integers become floats where a
    float is expected; anything else of the wrong type raises ``ValueError`` naming ``where``."""
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    if hint is Any:
        return copy.deepcopy(value)  # free-form (e.g. a transformers config): the caller must not share it
    if origin in (Union, types.UnionType):
        return _from_json_union(value, args, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _mismatch(value, hint, where)
        items = args[:-1] * len(value) if args[-1:] == (Ellipsis,) else args
        if len(items) != len(value):
            raise _mismatch(value, hint, where)
        pairs = enumerate(zip(value, items, strict=True))
        return tuple(_from_json(item, item_hint, f"{where}[{i}]") for i, (item, item_hint) in pairs)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise _mismatch(value, hint, where)
        return {key: _from_json(item, args[1], f"{where}.{key}") for key, item in value.items()}
    if hint not in _SCALARS:
        raise TypeError(f"{where}: config fields of type {hint} are not supported")  # a bug, not bad input
    if not _is_scalar(value, hint):
        raise _mismatch(value, hint, where)
    return float(value) if hint is float else value


def _from_json_union(value: Any, arms: tuple[Any, ...], where: str) -> Any:
    if value is None and type(None) in arms:
        return None
    for arm in arms:
        if arm is not type(None):
            try:
                return _from_json(value, arm, where)
            except ValueError:
                continue
    raise ValueError(f"{where}: expected {' or '.join(_expected(a) for a in arms)}, got {_describe(value)}")


def _mismatch(value: Any, hint: Any, where: str) -> ValueError:
    return ValueError(f"{where}: expected {_expected(hint)}, got {_describe(value)}")


_SCALARS = (bool, int, float, str)


def _is_scalar(value: Any, hint: type) -> bool:
    if isinstance(value, bool):  # bool is an int subclass, but true is no layer count
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _expected(hint: Any) -> str:
    """How an error message names a type hint: ``int``, ``a list of float``, ``null``, ..."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None):
        return "null"
    if origin is tuple:
        if args[-1:] == (Ellipsis,):
            return f"a list of {_expected(args[0])}"
        return f"a list of {len(args)} items ({', '.join(_expected(a) for a in args)})"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    return getattr(hint, "__name__", str(hint))


def _describe(value: Any) -> str:
    """``str 'four'``: the JSON value's Python type and a short repr, for error messages."""
    if value is None:
        return "null"
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 60 else shown[:57] + '...'}"
