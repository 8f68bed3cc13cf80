"""Convert the released X-SAM checkpoints (official ``pytorch_model.bin``) to xsam-torch.

Conversion is data plus checks: an ordered rename table (first matching rule wins), every source key
consumed exactly once, shapes checked against the model built from the component configs, and
missing or unknown keys reported by name.
"""

from __future__ import annotations

import errno
import json
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import (
    ImageEncoderConfig,
    LanguageModelConfig,
    MaskDecoderConfig,
    PixelDecoderConfig,
    SegmentationEncoderConfig,
    XSamConfig,
)

Replacement = str | Callable[[re.Match[str]], str] | None


def _shift_index(prefix: str) -> Callable[[re.Match[str]], str]:
    """``adapter_1.x`` -> ``{prefix}.0.x``: the official FPN modules are numbered from 1."""
    return lambda m: f"{prefix}.{int(m[1]) - 1}.{m[2]}"


# Official key pattern -> our key (None = dropped on purpose). Order matters: first match wins.
RENAME_RULES: list[tuple[str, Replacement]] = [
    (r"visual_encoder\.vision_model\.(.+)", r"image_encoder.siglip.\1"),
    (r"visual_projector\.model\.(.+)", r"image_projector.layers.\1"),
    (r"seg_projector\.model\.(.+)", r"seg_projector.layers.\1"),
    (r"llm_projector\.model\.(.+)", r"llm_projector.layers.\1"),
    (r"seg_connector\.model\.(\d+)\.model\.(.+)", r"connector.levels.\1.layers.\2"),
    (r"segmentor\.encoder\.(.+)", r"segmentation_encoder.sam.vision_encoder.\1"),
    # SAM's prompt-encoder positional buffer rides along in the release but is never used.
    (r"segmentor\.shared_image_embedding\.positional_embedding", None),
    (r"segmentor\.pixel_decoder\.adapter_(\d+)\.(.+)", _shift_index("pixel_decoder.lateral_convs")),
    (r"segmentor\.pixel_decoder\.layer_(\d+)\.(.+)", _shift_index("pixel_decoder.output_convs")),
    (r"segmentor\.pixel_decoder\.(.+)", r"pixel_decoder.\1"),
    (r"segmentor\.decoder\.queries_features\.(.+)", r"mask_decoder.query_features.\1"),
    (r"segmentor\.decoder\.queries_embedder\.(.+)", r"mask_decoder.query_position_embeddings.\1"),
    (r"segmentor\.decoder\.level_embed\.(.+)", r"mask_decoder.level_embed.\1"),
    (r"segmentor\.decoder\.decoder\.layers\.(.+)", r"mask_decoder.layers.\1"),
    (r"segmentor\.decoder\.decoder\.layernorm\.(.+)", r"mask_decoder.norm.\1"),
    (
        r"segmentor\.decoder\.decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.(.+)",
        r"mask_decoder.mask_embedder.\1.\2",
    ),
    (r"segmentor\.logit_scale", "class_head.logit_scale"),
    (r"bg_embeds\.weight", "class_head.background.weight"),
    (r"segmentor\.class_predictor\.(.+)", r"closed_set_head.classifier.\1"),
    (r"llm\.(.+)", r"language_model.\1"),
]
_COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in RENAME_RULES]

# What each released stage's checkpoint contains; used to name what a partial stage lacks.
STAGE_MODULES = {
    "s1": ["segmentation_encoder", "connector", "pixel_decoder", "mask_decoder", "closed_set_head"],
    "s2": ["image_projector", "seg_projector"],
    "s3": [
        "image_encoder",
        "image_projector",
        "segmentation_encoder",
        "seg_projector",
        "connector",
        "pixel_decoder",
        "mask_decoder",
        "class_head",
        "language_model",
        "llm_projector",
    ],
}


class ConversionError(ValueError):
    """A checkpoint does not fit the rename table or the target model; the message names the keys."""


def rename_key(key: str) -> tuple[bool, str | None]:
    """Return ``(matched, new_key)``; ``new_key`` is None for keys dropped on purpose."""
    for pattern, replacement in _COMPILED:
        match = pattern.fullmatch(key)
        if match is None:
            continue
        if replacement is None:
            return True, None
        if callable(replacement):
            return True, replacement(match)
        return True, match.expand(replacement)
    return False, None


def _preview(keys: list[str], limit: int = 12) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official ``pytorch_model.bin`` safely (``weights_only``) and lazily (``mmap``).

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: ``path`` is a folder.
        ConversionError: the file is empty, not a PyTorch checkpoint, a truncated archive, holds
            Python objects other than tensors (never unpickled), or is not a flat name -> tensor map.
    """
    path = Path(path)
    _check_checkpoint_file(path)
    state = _torch_load(path)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a flat mapping of names to tensors")
    return dict(state)


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only`` (no code from the file runs) and ``mmap`` where the format
    allows; a failure becomes a one-line :class:`ConversionError`, and so do the warnings that come
    with it (they are re-issued only when the file loads)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                # files in torch.save's legacy (pre-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling errors come in many types; all mean "not a state dict"
            summary = _load_error_summary(error)
            raise ConversionError(
                f"{path} is not a state dict that loads with weights_only=True: {summary}"
            ) from error
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return state


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80  # torch.save's legacy format is a pickle of protocol 2


def _check_checkpoint_file(path: Path) -> None:
    """Name the common wrong files from their first bytes, before torch's messages get a say."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the pytorch_model.bin file itself")
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise ConversionError(f"{path} is empty (0 bytes)")
    if head == _ZIP_MAGIC:
        if not zipfile.is_zipfile(path):  # the central directory sits at the end: gone when truncated
            raise ConversionError(f"{path} is a truncated or damaged zip archive (incomplete download?)")
    elif head[0] != _PICKLE_PROTOCOL_OPCODE:
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint (neither torch.save's zip archive nor a pickle; "
            f"it starts with {head!r})"
        )


def _load_error_summary(error: Exception) -> str:
    """One line out of torch.load's many-line messages: the global it refused, or the unpickler's
    own complaint."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours part of its advice
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it references {refused[1]}, which is no tensor type and was not called (no code in it ran)"
    if isinstance(error, EOFError):
        return "it ends early (truncated?)"
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = detail[1] if detail else (lines[0] if lines else "")
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


@dataclass
class ConvertedState:
    """Our-named tensors plus what the source lacked relative to the target model."""

    state: dict[str, torch.Tensor]
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def missing_modules(self) -> list[str]:
        return sorted({key.split(".")[0] for key in self.missing})


def convert_state_dict(
    official: Mapping[str, torch.Tensor],
    expected_shapes: Mapping[str, torch.Size],
    *,
    allow_missing: bool = False,
) -> ConvertedState:
    """Rename ``official`` keys to ours and check them against ``expected_shapes`` (our model).

    Every source key must match a rule and land on a key of the model with the same shape; each
    target key may be produced once. Missing target keys raise unless ``allow_missing`` (partial
    stage-1 / stage-2 checkpoints), in which case they are listed in the result.
    """
    state: dict[str, torch.Tensor] = {}
    unknown, unexpected, dropped, mismatched = [], [], [], []
    for key, tensor in official.items():
        matched, new_key = rename_key(key)
        if not matched:
            unknown.append(key)
        elif new_key is None:
            dropped.append(key)
        elif new_key in state:
            raise ConversionError(f"two checkpoint keys map to {new_key}")
        elif new_key not in expected_shapes:
            unexpected.append(f"{key} -> {new_key}")
        elif tuple(tensor.shape) != tuple(expected_shapes[new_key]):
            mismatched.append(f"{key}: {tuple(tensor.shape)} vs {tuple(expected_shapes[new_key])}")
        else:
            state[new_key] = tensor
    problems = []
    if unknown:
        problems.append(f"keys no rule knows: {_preview(unknown)}")
    if unexpected:
        problems.append(f"keys the model does not have: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_preview(mismatched)}")
    missing = sorted(set(expected_shapes) - set(state))
    if missing and not allow_missing:
        problems.append(f"model keys absent from the checkpoint: {_preview(missing)}")
    if problems:
        raise ConversionError("; ".join(problems))
    return ConvertedState(state=state, missing=missing, dropped=dropped)


def detect_stage(official: Mapping[str, torch.Tensor]) -> str:
    """``s1`` (segmentor + closed-set head), ``s2`` (projectors only) or ``s3`` (everything)."""
    if any(k.startswith("llm.") for k in official):
        return "s3"
    if any(k.startswith("segmentor.class_predictor.") for k in official):
        return "s1"
    if official and all(k.split(".")[0] in ("visual_projector", "seg_projector") for k in official):
        return "s2"
    raise ConversionError(
        "cannot tell which X-SAM stage this checkpoint is (no llm.*, class_predictor or projectors)"
    )


# ----------------------------------------------------------------------------------------- configs
def _vision_part(config: dict[str, Any]) -> dict[str, Any]:
    """Full model configs (SiglipConfig, SamConfig) nest the vision tower under ``vision_config``."""
    return config.get("vision_config", config)


def image_encoder_config(siglip: dict[str, Any], preprocessor: dict[str, Any] | None) -> ImageEncoderConfig:
    vision = _vision_part(siglip)
    defaults = ImageEncoderConfig()
    config = ImageEncoderConfig(
        hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        hidden_act=vision.get("hidden_act", defaults.hidden_act),
        layer_norm_eps=vision.get("layer_norm_eps", defaults.layer_norm_eps),
        use_head=vision.get("vision_use_head", True),
    )
    if preprocessor:
        size = preprocessor.get("size", {})
        side = size.get("height", size.get("shortest_edge", config.image_size))
        if side != config.image_size:
            raise ConversionError(
                f"SigLIP preprocessor size {side} differs from the model's {config.image_size}"
            )
        config.image_mean = tuple(preprocessor.get("image_mean", config.image_mean))
        config.image_std = tuple(preprocessor.get("image_std", config.image_std))
        config.resample = int(preprocessor.get("resample", config.resample))
    return config


def segmentation_encoder_config(
    sam: dict[str, Any], preprocessor: dict[str, Any] | None
) -> SegmentationEncoderConfig:
    vision = _vision_part(sam)
    defaults = SegmentationEncoderConfig()
    config = SegmentationEncoderConfig(
        hidden_size=vision["hidden_size"],
        mlp_dim=vision.get("mlp_dim", int(vision["hidden_size"] * vision.get("mlp_ratio", 4.0))),
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        image_size=vision.get("image_size", defaults.image_size),
        patch_size=vision.get("patch_size", defaults.patch_size),
        window_size=vision.get("window_size", defaults.window_size),
        global_attn_indexes=tuple(vision.get("global_attn_indexes", defaults.global_attn_indexes)),
        output_channels=vision.get("output_channels", defaults.output_channels),
        hidden_act=vision.get("hidden_act", defaults.hidden_act),
        layer_norm_eps=vision.get("layer_norm_eps", defaults.layer_norm_eps),
    )
    if preprocessor:
        longest = preprocessor.get("size", {}).get("longest_edge", config.image_size)
        if longest != config.image_size:
            raise ConversionError(
                f"SAM preprocessor size {longest} differs from the model's {config.image_size}"
            )
        config.image_mean = tuple(preprocessor.get("image_mean", config.image_mean))
        config.image_std = tuple(preprocessor.get("image_std", config.image_std))
        config.resample = int(preprocessor.get("resample", config.resample))
    return config


def decoder_configs(mask2former: dict[str, Any]) -> tuple[PixelDecoderConfig, MaskDecoderConfig]:
    """X-SAM borrows only the config of Mask2Former; ``decoder_layers - 1`` layers are used."""
    pixel = PixelDecoderConfig(
        hidden_dim=mask2former.get("feature_size", 256),
        mask_dim=mask2former.get("mask_feature_size", 256),
        num_layers=mask2former.get("encoder_layers", 6),
        num_heads=mask2former.get("num_attention_heads", 8),
        ffn_dim=mask2former.get("encoder_feedforward_dim", 1024),
        common_stride=mask2former.get("common_stride", 4),
    )
    mask = MaskDecoderConfig(
        hidden_dim=mask2former.get("hidden_dim", 256),
        num_queries=mask2former.get("num_queries", 200),
        num_layers=mask2former.get("decoder_layers", 10) - 1,
        num_heads=mask2former.get("num_attention_heads", 8),
        ffn_dim=mask2former.get("dim_feedforward", 2048),
    )
    return pixel, mask


@dataclass
class ComponentConfigs:
    """The pretrained components' own configs, as found in the official ``inits/`` folders."""

    llm: dict[str, Any]
    siglip: dict[str, Any]
    sam: dict[str, Any]
    mask2former: dict[str, Any] | None = None
    siglip_preprocessor: dict[str, Any] | None = None
    sam_preprocessor: dict[str, Any] | None = None
    connector_hidden_dim: int | None = None

    @classmethod
    def from_inits(cls, inits: str | Path) -> ComponentConfigs:
        """Read ``inits/{Phi-3*,siglip*,sam*,mask2former*}/{config,preprocessor_config}.json``."""
        root = Path(inits)

        def find(prefix: str, name: str, required: bool = True) -> dict[str, Any] | None:
            hits = sorted(
                p / name for p in root.iterdir() if p.name.lower().startswith(prefix) and (p / name).is_file()
            )
            if not hits:
                if required:
                    raise FileNotFoundError(f"no {prefix}*/{name} under {root}")
                return None
            return json.loads(hits[0].read_text())

        return cls(
            llm=find("phi-3", "config.json"),
            siglip=find("siglip", "config.json"),
            sam=find("sam", "config.json"),
            mask2former=find("mask2former", "config.json", required=False),
            siglip_preprocessor=find("siglip", "preprocessor_config.json", required=False),
            sam_preprocessor=find("sam", "preprocessor_config.json", required=False),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> ComponentConfigs:
        """Read a single JSON with keys ``llm``, ``visual_encoder``, ``segmentor_encoder_sam``, ... (the
        layout of the parity fixtures' ``component_configs.json``)."""
        data = json.loads(Path(path).read_text())
        connector = data.get("seg_connector_config", {})
        return cls(
            llm=data["llm"],
            siglip=data["visual_encoder"],
            sam=data["segmentor_encoder_sam"],
            mask2former=data.get("mask2former_effective_config", data.get("mask2former")),
            siglip_preprocessor=data.get("siglip_preprocessor_config"),
            sam_preprocessor=data.get("sam_preprocessor_config"),
            connector_hidden_dim=connector.get("hidden_channels"),
        )


def build_config(
    components: ComponentConfigs, *, vocab_size: int, connector_hidden_dim: int | None = None
) -> XSamConfig:
    """Our config for the released architecture with the given components.

    ``vocab_size`` is the LLM vocabulary after the X-SAM tokens were added (32014 for Phi-3).
    """
    config = XSamConfig.official()
    config.image_encoder = image_encoder_config(components.siglip, components.siglip_preprocessor)
    config.segmentation_encoder = segmentation_encoder_config(components.sam, components.sam_preprocessor)
    llm = {
        k: v
        for k, v in components.llm.items()
        if not k.startswith("_")
        and k not in ("transformers_version", "dtype", "torch_dtype", "auto_map", "use_cache")
    }
    llm["vocab_size"] = vocab_size
    config.language_model = LanguageModelConfig(llm)
    if components.mask2former is not None:
        config.pixel_decoder, config.mask_decoder = decoder_configs(components.mask2former)
    hidden = connector_hidden_dim or components.connector_hidden_dim
    if hidden is not None:
        config.connector.hidden_dim = hidden
    config.validate()
    return config


# ------------------------------------------------------------------------------------------ driver
_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(_DTYPES)}")
    return _DTYPES[name]


def _connector_width(official: Mapping[str, torch.Tensor]) -> int | None:
    first = official.get("seg_connector.model.0.model.0.weight")
    return None if first is None else int(first.shape[0])


def convert_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    inits: str | Path | None = None,
    component_configs: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> ConvertedState:
    """Convert an official ``pytorch_model.bin`` into a ``from_pretrained`` directory at ``out``.

    Component configs come from ``inits`` (the official ``inits/`` folder) or ``component_configs``
    (one JSON); without either the released architecture is assumed. The tokenizer (default: the
    bundled Phi-3 one) gets the X-SAM tokens and is saved beside the weights. Stage-1 and stage-2
    checkpoints convert to partial directories whose ``conversion.json`` names the missing modules;
    load them with ``XSamModel.from_pretrained(out, allow_missing=True)``.

    An existing non-empty ``out`` is replaced only with ``overwrite``, and atomically: the old model
    stays intact until the new one is complete, and files of the user's beside it are kept (see
    :func:`~xsam.modeling.serialization.write_directory`). Staging folders ``.{name}-staging-*`` /
    ``.{name}-old-*`` that a killed convert or save to ``out`` left beside it are removed first.

    Raises:
        FileExistsError: ``out`` exists, is not empty, and ``overwrite`` is false.
        NotADirectoryError: ``out`` is a file.
        ConversionError: the checkpoint is unreadable or does not fit the model, or writing ``out``
            failed (a full disk, say); ``out`` is then left as it was.
    """
    from ..modeling.pretrained import config_dict
    from ..modeling.serialization import tied_aliases
    from ..modeling.xsam import XSamModel
    from ..tokens import load_tokenizer

    if inits is not None and component_configs is not None:
        raise ValueError("give --inits or --component-configs, not both")
    torch_dtype = parse_dtype(dtype)
    _prepare_output(Path(out), overwrite=overwrite)
    official = load_official_checkpoint(checkpoint)
    stage = detect_stage(official)
    text_tokenizer = load_tokenizer(tokenizer)
    config = _target_config(official, _components(inits, component_configs), vocab_size=len(text_tokenizer))
    with torch.device("meta"):
        model = XSamModel(config)
    aliases = tied_aliases(model)
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in aliases}
    converted = convert_state_dict(official, expected, allow_missing=stage != "s3")
    report = {
        "source": str(checkpoint),
        "stage": stage,
        "missing_modules": converted.missing_modules,
        "dropped_keys": converted.dropped,
    }

    def write_extras(folder: Path) -> None:
        text_tokenizer.save_pretrained(str(folder))
        (folder / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")

    _write_output(Path(out), converted.state, config_dict(config), write_extras, torch_dtype)
    return converted


def _prepare_output(out: Path, *, overwrite: bool) -> None:
    """Clean up after a killed earlier convert, then refuse to replace a model unless asked to."""
    from ..modeling.serialization import remove_stale_staging

    remove_stale_staging(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")


def _components(inits: str | Path | None, component_configs: str | Path | None) -> ComponentConfigs | None:
    if inits is not None:
        return ComponentConfigs.from_inits(inits)
    if component_configs is not None:
        return ComponentConfigs.from_json(component_configs)
    return None


def _target_config(
    official: Mapping[str, torch.Tensor], components: ComponentConfigs | None, *, vocab_size: int
) -> XSamConfig:
    """Our config for ``official``: the components' sizes (or the release's), the checkpoint's widths."""
    if components is None:
        config = XSamConfig.official()
        config.language_model.hf_config["vocab_size"] = vocab_size
        config.connector.hidden_dim = _connector_width(official) or config.connector.hidden_dim
    else:
        config = build_config(
            components, vocab_size=vocab_size, connector_hidden_dim=_connector_width(official)
        )
    classifier = official.get("segmentor.class_predictor.weight")
    if classifier is not None:
        config.mask_decoder.num_closed_set_classes = int(classifier.shape[0]) - 1
    return config


_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _write_output(
    out: Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    extra_writer: Callable[[Path], None],
    dtype: torch.dtype | None,
) -> None:
    """Write ``out`` atomically; an operating-system failure while writing becomes one clear line."""
    from ..modeling.serialization import write_directory

    try:
        # the cast happens tensor by tensor while writing, so memory never holds a cast copy of the model
        write_directory(out, state, config, extra_writer=extra_writer, dtype=dtype)
    except (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise  # these already name the path and reach the command line as they are
    except OSError as error:
        reason = "no space left on the device" if error.errno in _DISK_FULL else error.strerror or str(error)
        raise ConversionError(f"could not write {out}: {reason}; {out} was left as it was") from error
