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
