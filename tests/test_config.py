import json

import pytest

from xsam.config import ConnectorConfig, XSamConfig


@pytest.mark.parametrize("preset", [XSamConfig.official, XSamConfig.small, XSamConfig.tiny])
def test_round_trip(preset, tmp_path):
    config = preset()
    assert XSamConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "config.json"
    config.save(path)
    assert XSamConfig.load(path) == config
    json.loads(path.read_text())  # plain JSON


def test_unknown_keys_raise_with_their_names():
    data = XSamConfig.tiny().to_dict()
    data["mask_decoder"]["num_querys"] = 3
    with pytest.raises(ValueError, match=r"XSamConfig\.mask_decoder: unknown config keys \['num_querys'\]"):
        XSamConfig.from_dict(data)
    data = XSamConfig.tiny().to_dict()
    data["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        XSamConfig.from_dict(data)


def test_official_token_counts():
    config = XSamConfig.official()
    assert config.image_encoder.num_tokens == 729
    assert config.num_seg_tokens == 1024
    assert config.num_image_tokens == 1753
    assert config.mask_size == 128
    assert config.language_model.vocab_size == 32014


def test_small_preset_is_the_release_structure_at_small_widths():
    import torch

    from xsam.modeling.xsam import XSamModel

    config = XSamConfig.small()
    assert config.num_image_tokens == 64 + 256 and config.mask_size == 64
    assert config.language_model.vocab_size == 32014  # the real Phi-3 vocabulary
    with torch.device("meta"):
        model = XSamModel(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 10e6 < parameters < 25e6  # under 50 MB when stored in 16-bit floats


def test_inconsistent_connector_is_rejected():
    with pytest.raises(ValueError, match="same length"):
        XSamConfig(connector=ConnectorConfig(scale_factors=(2.0, 1.0)))


def test_from_dict_does_not_share_state_with_input():
    data = XSamConfig.tiny().to_dict()
    config = XSamConfig.from_dict(data)
    data["language_model"]["hf_config"]["hidden_size"] = 1
    assert config.language_model.hidden_size == 64


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("image_encoder.num_hidden_layers", "four", "expected int, got str 'four'"),
        ("image_encoder.num_hidden_layers", True, "expected int, got bool True"),
        ("image_encoder.use_head", 1, "expected bool, got int 1"),
        ("image_encoder.layer_norm_eps", "1e-6", "expected float, got str '1e-6'"),
        ("image_encoder", [1, 2], "expected a mapping of ImageEncoderConfig fields, got list [1, 2]"),
        ("segmentation_encoder.global_attn_indexes", "1,3", "expected a list of int, got str '1,3'"),
        ("segmentation_encoder.global_attn_indexes", [1, "3"], "[1]: expected int, got str '3'"),
        ("mask_decoder.num_closed_set_classes", "133", "expected int or null, got str '133'"),
        ("language_model.hf_config", ["phi3"], "expected a mapping, got list ['phi3']"),
        ("attn_implementation", None, "expected str, got null"),
    ],
)
def test_wrong_types_name_the_field_and_what_was_expected(path, value, message):
    data = XSamConfig.tiny().to_dict()
    *parents, key = path.split(".")
    owner = data
    for part in parents:
        owner = owner[part]
    owner[key] = value
    with pytest.raises(ValueError) as error:
        XSamConfig.from_dict(data)
    separator = "" if message.startswith("[") else ": "
    assert str(error.value) == f"XSamConfig.{path}{separator}{message}"


def test_json_spellings_of_the_right_types_are_accepted():
    data = XSamConfig.tiny().to_dict()
    data["image_encoder"]["layer_norm_eps"] = 1  # JSON writes 1.0 as 1 in some tools
    data["mask_decoder"]["num_closed_set_classes"] = 133
    config = XSamConfig.from_dict(data)
    assert config.image_encoder.layer_norm_eps == 1.0 and isinstance(
        config.image_encoder.layer_norm_eps, float
    )
    assert config.mask_decoder.num_closed_set_classes == 133
    assert config.segmentation_encoder.global_attn_indexes == (1, 3)  # a JSON list, stored as the tuple


def test_a_config_that_is_not_a_mapping_is_a_value_error():
    with pytest.raises(ValueError, match="XSamConfig: expected a mapping of XSamConfig fields, got list"):
        XSamConfig.from_dict([1])
