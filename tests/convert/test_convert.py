"""The official-checkpoint converter on a small official-format checkpoint made here (no fixtures)."""

import errno
import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from xsam.cli import main
from xsam.config import SegmentationEncoderConfig, XSamConfig
from xsam.convert.official import ConversionError, convert_checkpoint, rename_key
from xsam.modeling.xsam import XSamModel

# Our key -> the official key, written independently of the converter's table (checked against it).
OURS_TO_OFFICIAL = [
    (r"image_encoder\.siglip\.(.+)", r"visual_encoder.vision_model.\1"),
    (r"image_projector\.layers\.(.+)", r"visual_projector.model.\1"),
    (r"seg_projector\.layers\.(.+)", r"seg_projector.model.\1"),
    (r"llm_projector\.layers\.(.+)", r"llm_projector.model.\1"),
    (r"connector\.levels\.(\d+)\.layers\.(.+)", r"seg_connector.model.\1.model.\2"),
    (r"segmentation_encoder\.sam\.vision_encoder\.(.+)", r"segmentor.encoder.\1"),
    (r"pixel_decoder\.lateral_convs\.0\.(.+)", r"segmentor.pixel_decoder.adapter_1.\1"),
    (r"pixel_decoder\.output_convs\.0\.(.+)", r"segmentor.pixel_decoder.layer_1.\1"),
    (r"pixel_decoder\.(.+)", r"segmentor.pixel_decoder.\1"),
    (r"mask_decoder\.query_features\.(.+)", r"segmentor.decoder.queries_features.\1"),
    (r"mask_decoder\.query_position_embeddings\.(.+)", r"segmentor.decoder.queries_embedder.\1"),
    (r"mask_decoder\.level_embed\.(.+)", r"segmentor.decoder.level_embed.\1"),
    (r"mask_decoder\.layers\.(.+)", r"segmentor.decoder.decoder.layers.\1"),
    (r"mask_decoder\.norm\.(.+)", r"segmentor.decoder.decoder.layernorm.\1"),
    (
        r"mask_decoder\.mask_embedder\.(\d+)\.(.+)",
        r"segmentor.decoder.decoder.mask_predictor.mask_embedder.\1.0.\2",
    ),
    (r"class_head\.logit_scale", r"segmentor.logit_scale"),
    (r"class_head\.background\.weight", r"bg_embeds.weight"),
    (r"closed_set_head\.classifier\.(.+)", r"segmentor.class_predictor.\1"),
    (r"language_model\.(.+)", r"llm.\1"),
]


def _official_key(key: str) -> str:
    for pattern, template in OURS_TO_OFFICIAL:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template)
    raise KeyError(key)


def _small_config() -> XSamConfig:
    """Tiny widths with the release's SAM depth (24 blocks) and 4 deformable points, which the
    component configs of an ``inits/`` folder imply."""
    config = XSamConfig.tiny()
    config.segmentation_encoder = SegmentationEncoderConfig(
        hidden_size=32,
        mlp_dim=64,
        num_hidden_layers=24,
        num_attention_heads=2,
        image_size=128,
        output_channels=16,
        window_size=4,
    )
    config.pixel_decoder.num_points = 4
    return config


def _component_configs(config: XSamConfig) -> dict:
    image, sam, pixel, mask = (
        config.image_encoder,
        config.segmentation_encoder,
        config.pixel_decoder,
        config.mask_decoder,
    )
    return {
        "llm": config.language_model.hf_config,
        "visual_encoder": {
            "hidden_size": image.hidden_size,
            "intermediate_size": image.intermediate_size,
            "num_hidden_layers": image.num_hidden_layers,
            "num_attention_heads": image.num_attention_heads,
            "image_size": image.image_size,
            "patch_size": image.patch_size,
        },
        "segmentor_encoder_sam": {
            "vision_config": {
                "hidden_size": sam.hidden_size,
                "mlp_dim": sam.mlp_dim,
                "num_hidden_layers": sam.num_hidden_layers,
                "num_attention_heads": sam.num_attention_heads,
                "image_size": sam.image_size,
                "window_size": sam.window_size,
                "global_attn_indexes": list(sam.global_attn_indexes),
                "output_channels": sam.output_channels,
            }
        },
        "mask2former_effective_config": {
            "feature_size": pixel.hidden_dim,
            "mask_feature_size": pixel.mask_dim,
            "hidden_dim": mask.hidden_dim,
            "encoder_layers": pixel.num_layers,
            "num_attention_heads": pixel.num_heads,
            "encoder_feedforward_dim": pixel.ffn_dim,
            "dim_feedforward": mask.ffn_dim,
            "num_queries": mask.num_queries,
            "decoder_layers": mask.num_layers + 1,
            "common_stride": 4,
        },
        "siglip_preprocessor_config": {
            "size": {"height": image.image_size, "width": image.image_size},
            "resample": 3,
        },
        "sam_preprocessor_config": {"size": {"longest_edge": sam.image_size}, "resample": 2},
    }


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(model, official-format checkpoint path, component-configs path)."""
    torch.manual_seed(7)
    config = _small_config()
    model = XSamModel(config)
    folder = tmp_path_factory.mktemp("official")
    state = {_official_key(k): v for k, v in model.state_dict().items()}
    state["segmentor.shared_image_embedding.positional_embedding"] = torch.randn(2, 8)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "components.json").write_text(json.dumps(_component_configs(config)))
    return model, folder / "pytorch_model.bin", folder / "components.json"


def test_rename_table_agrees_with_an_independent_inverse(official):
    model, _, _ = official
    for key in model.state_dict():
        matched, ours = rename_key(_official_key(key))
        assert matched and ours == key


def test_round_trip_is_exact_and_reads_preprocessing(official, tmp_path):
    model, checkpoint, components = official
    result = convert_checkpoint(checkpoint, tmp_path / "out", component_configs=components)
    assert result.dropped == ["segmentor.shared_image_embedding.positional_embedding"]
    loaded = XSamModel.from_pretrained(tmp_path / "out")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.config.image_encoder.resample == 3  # from the preprocessor config, not a default
    assert json.loads((tmp_path / "out" / "conversion.json").read_text())["stage"] == "s3"


def test_cli_converts_to_bf16(official, tmp_path):
    _, checkpoint, components = official
    code = main(
        [
            "convert",
            "--checkpoint",
            str(checkpoint),
            "--component-configs",
            str(components),
            "--out",
            str(tmp_path / "out"),
            "--dtype",
            "bf16",
        ]
    )
    assert code == 0
    loaded = XSamModel.from_pretrained(tmp_path / "out")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def _rewrite(checkpoint, tmp_path, change):
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    path = tmp_path / "edited.bin"
    torch.save(state, path)
    return path


def test_unknown_missing_and_misshapen_keys_are_named(official, tmp_path):
    _, checkpoint, components = official
    unknown = _rewrite(checkpoint, tmp_path, lambda s: s.update({"segmentor.mystery.weight": torch.zeros(1)}))
    with pytest.raises(ConversionError, match=r"keys no rule knows: segmentor\.mystery\.weight"):
        convert_checkpoint(unknown, tmp_path / "a", component_configs=components)
    missing = _rewrite(checkpoint, tmp_path, lambda s: s.pop("llm_projector.model.2.bias"))
    with pytest.raises(ConversionError, match=r"absent from the checkpoint: llm_projector\.layers\.2\.bias"):
        convert_checkpoint(missing, tmp_path / "b", component_configs=components)
    misshapen = _rewrite(checkpoint, tmp_path, lambda s: s.update({"bg_embeds.weight": torch.zeros(1, 5)}))
    with pytest.raises(ConversionError, match=r"bg_embeds\.weight: \(1, 5\) vs \(1, 32\)"):
        convert_checkpoint(misshapen, tmp_path / "c", component_configs=components)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


class _Payload:
    """Unpickling this with code execution allowed would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_checkpoint(path):
    torch.save({"bg_embeds.weight": torch.zeros(1, 32)}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda path, tmp: path.write_text("hello, this is a text file\n"),
            r"not a PyTorch checkpoint .*b'hell'",
        ),
        (lambda path, tmp: path.write_bytes(b""), r"is empty \(0 bytes\)"),
        (
            lambda path, tmp: path.write_bytes(_torch_checkpoint(tmp / "whole.bin")[:300]),
            "truncated or damaged zip archive",
        ),
        (lambda path, tmp: torch.save([torch.zeros(1)], path), "flat mapping of names to tensors"),
        (
            lambda path, tmp: path.write_bytes(pickle.dumps({"x": _Payload(tmp / "marker")}, protocol=2)),
            "not a state dict that loads with weights_only=True",
        ),
        (
            lambda path, tmp: torch.save({"x": _Payload(tmp / "marker")}, path),
            r"references .*open, which is no tensor type and was not called",
        ),
    ],
    ids=["text", "empty", "truncated-zip", "list", "pickle-with-code", "torch-save-with-code"],
)
def test_files_that_are_not_state_dicts_are_rejected_in_one_line(tmp_path, capsys, make, message):
    checkpoint = tmp_path / "pytorch_model.bin"
    make(checkpoint, tmp_path)
    with pytest.raises(ConversionError, match=message) as error:
        convert_checkpoint(checkpoint, tmp_path / "out")
    assert str(error.value).startswith(str(checkpoint)) and "\n" not in str(error.value)
    assert not (tmp_path / "marker").exists()  # weights_only: the pickle's code never ran
    assert not (tmp_path / "out").exists()
    assert main(["convert", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_missing_checkpoint_and_folder_checkpoint_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        convert_checkpoint(tmp_path / "absent.bin", tmp_path / "out")
    with pytest.raises(IsADirectoryError, match=r"give the pytorch_model\.bin file itself"):
        convert_checkpoint(tmp_path, tmp_path / "out")


def _convert_cli(checkpoint, components, out, *extra):
    arguments = ["--checkpoint", str(checkpoint), "--component-configs", str(components), "--out", str(out)]
    return main(["convert", *arguments, *extra])


def _contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_existing_output_is_replaced_only_with_overwrite(official, tmp_path, capsys):
    _, checkpoint, components = official
    out = tmp_path / "out"
    assert _convert_cli(checkpoint, components, out) == 0
    (out / "NOTES.md").write_text("my notes")
    before = _contents(out)
    capsys.readouterr()
    assert _convert_cli(checkpoint, components, out, "--dtype", "bf16") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"output folder {out} exists and is not empty" in err and "--overwrite" in err
    assert _contents(out) == before
    assert _convert_cli(checkpoint, components, out, "--dtype", "bf16", "--overwrite") == 0
    assert {p.dtype for p in XSamModel.from_pretrained(out).parameters()} == {torch.bfloat16}
    assert (out / "NOTES.md").read_text() == "my notes"  # the user's file beside the model is kept
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old folder left


def test_an_empty_output_folder_needs_no_overwrite(official, tmp_path):
    _, checkpoint, components = official
    (tmp_path / "out").mkdir()
    assert _convert_cli(checkpoint, components, tmp_path / "out") == 0
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        convert_checkpoint(checkpoint, tmp_path / "file", component_configs=components)


def test_stale_staging_of_a_killed_convert_is_removed_first(tmp_path):
    stale = tmp_path / ".out-staging-0123abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (tmp_path / "notes.bin").write_text("not a checkpoint")
    with pytest.raises(ConversionError):
        convert_checkpoint(tmp_path / "notes.bin", tmp_path / "out")
    assert not stale.exists()


def test_a_full_disk_is_one_line_and_keeps_the_old_output(official, tmp_path, capsys, monkeypatch):
    from xsam.modeling import serialization

    _, checkpoint, components = official
    out = tmp_path / "out"
    assert _convert_cli(checkpoint, components, out) == 0
    before = _contents(out)
    capsys.readouterr()

    def disk_full(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(serialization, "write_safetensors", disk_full)
    assert _convert_cli(checkpoint, components, out, "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"could not write {out}: no space left on the device" in err
    assert _contents(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stage_two_projectors_convert_as_a_partial_initialisation(official, tmp_path):
    model, checkpoint, components = official
    state = torch.load(checkpoint, weights_only=True)
    projectors = {k: v for k, v in state.items() if k.startswith(("visual_projector.", "seg_projector."))}
    path = tmp_path / "s2.bin"
    torch.save(projectors, path)
    result = convert_checkpoint(path, tmp_path / "s2", component_configs=components)
    assert "language_model" in result.missing_modules and "image_projector" not in result.missing_modules
    report = json.loads((tmp_path / "s2" / "conversion.json").read_text())
    assert report["stage"] == "s2" and report["missing_modules"] == result.missing_modules
    with pytest.raises(KeyError, match="missing keys"):
        XSamModel.from_pretrained(tmp_path / "s2")
    partial = XSamModel.from_pretrained(tmp_path / "s2", allow_missing=True)
    assert torch.equal(partial.seg_projector.layers[0].weight, model.seg_projector.layers[0].weight)


def test_stage_one_segmentor_converts_with_its_closed_set_head(tmp_path):
    config = _small_config()
    config.mask_decoder.num_closed_set_classes = 133
    model = XSamModel(config)
    stage_one = ("segmentation_encoder.", "connector.", "pixel_decoder.", "mask_decoder.", "closed_set_head.")
    state = {_official_key(k): v for k, v in model.state_dict().items() if k.startswith(stage_one)}
    torch.save(state, tmp_path / "s1.bin")
    (tmp_path / "components.json").write_text(json.dumps(_component_configs(config)))
    result = convert_checkpoint(
        tmp_path / "s1.bin", tmp_path / "s1", component_configs=tmp_path / "components.json"
    )
    assert set(result.missing_modules) == {
        "class_head",
        "image_encoder",
        "image_projector",
        "language_model",
        "llm_projector",
        "seg_projector",
    }
    loaded = XSamModel.from_pretrained(tmp_path / "s1", allow_missing=True)
    assert loaded.closed_set_head.classifier.weight.shape == (134, config.mask_decoder.hidden_dim)
    assert torch.equal(loaded.closed_set_head.classifier.weight, model.closed_set_head.classifier.weight)
    assert json.loads((tmp_path / "s1" / "conversion.json").read_text())["stage"] == "s1"
