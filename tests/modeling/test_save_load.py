"""save_pretrained / from_pretrained: bit-exact round trips, sharding, dtype, and clear key errors."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from xsam.config import XSamConfig
from xsam.modeling.serialization import INDEX_NAME, WEIGHTS_NAME
from xsam.modeling.xsam import XSamModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(5)
    return XSamModel(XSamConfig.tiny())


def _assert_same_state(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key


def test_round_trip_is_bit_exact(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = XSamModel.from_pretrained(tmp_path / "m")
    _assert_same_state(model, loaded)
    assert loaded.config == model.config
    assert loaded.name_or_path == str(tmp_path / "m")  # where the predictor looks for a tokenizer
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", WEIGHTS_NAME]
    assert not any(p.is_meta for p in loaded.parameters())
    assert not any(b.is_meta for b in loaded.buffers())
    assert not loaded.training


def test_loaded_model_computes_the_same_outputs(model, tmp_path, tiny_images):
    model.save_pretrained(tmp_path / "m")
    loaded = XSamModel.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        a = model.eval().encode_image(tiny_images[0][:1], tiny_images[1][:1])
        b = loaded.encode_image(tiny_images[0][:1], tiny_images[1][:1])
    assert torch.equal(a.llm_tokens, b.llm_tokens)
    assert torch.equal(a.mask_features, b.mask_features)


def test_sharded_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "m", max_shard_bytes=2_000_000)
    files = sorted(p.name for p in (tmp_path / "m").glob("model-*.safetensors"))
    assert len(files) > 1
    assert not (tmp_path / "m" / WEIGHTS_NAME).exists()
    index = json.loads((tmp_path / "m" / INDEX_NAME).read_text())
    assert set(index["weight_map"].values()) == set(files)
    _assert_same_state(model, XSamModel.from_pretrained(tmp_path / "m"))
    # saving again unsharded replaces the shards instead of mixing two layouts
    model.save_pretrained(tmp_path / "m")
    assert not list((tmp_path / "m").glob("model-*.safetensors"))
    assert not (tmp_path / "m" / INDEX_NAME).exists()


def test_dtype_is_selectable(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    loaded = XSamModel.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    key = "mask_decoder.query_features.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key].bfloat16())


def test_missing_and_unexpected_keys_are_named(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / WEIGHTS_NAME
    state = load_file(path)
    del state["llm_projector.layers.0.bias"]
    state["mystery.weight"] = torch.zeros(1)
    save_file(state, path)
    with pytest.raises(KeyError, match=r"missing keys \[llm_projector\.layers\.0\.bias\]") as error:
        XSamModel.from_pretrained(tmp_path / "m")
    assert "unexpected keys [mystery.weight]" in str(error.value)
    # non-strict loading tolerates the extra key but never a missing one
    with pytest.raises(KeyError, match="missing keys"):
        XSamModel.from_pretrained(tmp_path / "m", strict=False)


def test_failed_save_leaves_the_target_untouched(model, tmp_path, monkeypatch):
    from xsam.modeling import serialization

    model.save_pretrained(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "write_safetensors", disk_full)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left behind


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        XSamModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(ValueError, match="not an xsam-torch config"):
        XSamModel.from_pretrained(tmp_path)


def test_default_names_the_bundled_model_and_says_when_it_is_missing(model, tmp_path, monkeypatch):
    from xsam.modeling import pretrained as module

    monkeypatch.setattr(module, "bundled_model_directory", lambda: tmp_path / "absent")
    monkeypatch.chdir(tmp_path)  # no local folder called "default"
    with pytest.raises(FileNotFoundError, match=r"recipes/default-model/train\.sh"):
        XSamModel.from_pretrained("default")
    copy.deepcopy(model).half().save_pretrained(tmp_path / "bundled")
    monkeypatch.setattr(module, "bundled_model_directory", lambda: tmp_path / "bundled")
    loaded = XSamModel.from_pretrained("default")
    assert loaded.config == model.config
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # 16-bit storage, float32 compute
