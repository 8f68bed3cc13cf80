"""save_pretrained / from_pretrained: bit-exact round trips, sharding, dtype, and clear key errors."""

import copy
import errno
import json
import os
from pathlib import Path

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


def _contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_save_leaves_the_target_untouched(model, tmp_path, monkeypatch):
    from xsam.modeling import serialization

    model.save_pretrained(tmp_path / "m")
    before = _contents(tmp_path / "m")

    def disk_full(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")  # a real writer fails part-way through
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serialization, "write_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "m")
    assert _contents(tmp_path / "m") == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left behind


def test_old_model_stays_whole_until_the_new_one_is_complete(model, tmp_path):
    from xsam.modeling.pretrained import config_dict
    from xsam.modeling.serialization import write_directory

    model.save_pretrained(tmp_path / "m", max_shard_bytes=2_000_000)
    before = _contents(tmp_path / "m")
    seen = []

    def last_file(staging):  # runs after the new weights are written, before the swap
        seen.append(_contents(tmp_path / "m") == before)
        XSamModel.from_pretrained(tmp_path / "m")  # still the old, loadable model
        (staging / "notes.md").write_text("new")

    zeros = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    write_directory(tmp_path / "m", zeros, config_dict(model.config), extra_writer=last_file)
    assert seen == [True]
    loaded = XSamModel.from_pretrained(tmp_path / "m")
    assert all(not v.any() for v in loaded.state_dict().values())
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", WEIGHTS_NAME, "notes.md"]


def test_saving_keeps_the_users_other_files(model, tmp_path):
    target = tmp_path / "m"
    model.save_pretrained(target)
    (target / "README.md").write_text("my notes")
    (target / "eval").mkdir()
    (target / "eval" / "scores.json").write_text("{}")
    (target / "model-notes.safetensors.txt").write_text("not a weight file")
    target.chmod(0o750)
    model.save_pretrained(target, max_shard_bytes=2_000_000)
    assert (target / "README.md").read_text() == "my notes"
    assert (target / "eval" / "scores.json").read_text() == "{}"
    assert (target / "model-notes.safetensors.txt").exists()
    assert not (target / WEIGHTS_NAME).exists()  # the unsharded weights were replaced, not kept
    assert target.stat().st_mode & 0o777 == 0o750
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    _assert_same_state(model, XSamModel.from_pretrained(target))


def test_a_failure_while_moving_the_new_model_in_keeps_the_old_one(model, tmp_path, monkeypatch):
    """The first move out of the staging folder fails (an I/O error; or think of the process killed)."""
    model.save_pretrained(tmp_path / "m")
    before = _contents(tmp_path / "m")
    failed = []

    def failing_once(move):
        def fail_once(source, destination, **kwargs):
            if not failed and any(part.startswith(".m-") for part in Path(source).parts):
                failed.append(source)
                raise OSError(errno.EIO, "Input/output error")
            move(source, destination, **kwargs)

        return fail_once

    monkeypatch.setattr(os, "rename", failing_once(os.rename))
    monkeypatch.setattr(os, "replace", failing_once(os.replace))
    with pytest.raises(OSError, match="Input/output"):
        model.save_pretrained(tmp_path / "m")
    assert failed
    assert _contents(tmp_path / "m") == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_leftovers_of_a_killed_save_are_cleaned_up_or_restored(model, tmp_path):
    target = tmp_path / "m"
    model.save_pretrained(target)
    (target / "README.md").write_text("my notes")
    (tmp_path / ".m-staging-0123abcd").mkdir()  # killed while writing
    (tmp_path / ".m-v2-staging-0123abcd").mkdir()  # another target's: not ours to remove
    (tmp_path / "keep.txt").write_text("x")
    model.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m-v2-staging-0123abcd", "keep.txt", "m"]
    # killed between the two renames of the swap: the target is gone, the old model is beside it
    target.rename(tmp_path / ".m-old-89abcdef")
    model.save_pretrained(target)
    assert (target / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m-v2-staging-0123abcd", "keep.txt", "m"]


def test_saving_onto_a_file_is_refused(model, tmp_path):
    (tmp_path / "m").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m").read_text() == "not a folder"


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


# ------------------------------------------------------------------------------- bad model folders
def _saved(model, folder, **kwargs):
    model.save_pretrained(folder, **kwargs)
    return folder


def _edit_config(folder, change):
    data = json.loads((folder / "config.json").read_text())
    change(data)
    (folder / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: raw[: len(raw) // 2], "file not fully covered"),
        (lambda raw: raw[:5], "header"),
        (lambda raw: raw[:8] + b"{oops" + raw[13:], "invalid JSON in header"),
        (lambda raw: b"these are not weights\n", "header too large"),
        (lambda raw: b"", "header too small"),
    ],
    ids=["truncated", "truncated-header", "garbage-header", "text-file", "empty"],
)
def test_damaged_weights_name_the_file(model, tmp_path, damage, reason):
    path = _saved(model, tmp_path / "m") / WEIGHTS_NAME
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match="not a readable safetensors file") as error:
        XSamModel.from_pretrained(tmp_path / "m")
    assert str(path) in str(error.value) and reason in str(error.value)


@pytest.mark.parametrize("allow_missing", [False, True])
def test_a_tensor_of_the_wrong_shape_is_named(model, tmp_path, allow_missing):
    path = _saved(model, tmp_path / "m") / WEIGHTS_NAME
    state = load_file(path)
    state["llm_projector.layers.0.bias"] = torch.zeros(3)
    save_file(state, path)
    with pytest.raises(ValueError) as error:
        XSamModel.from_pretrained(tmp_path / "m", allow_missing=allow_missing)
    assert str(error.value) == (
        f"{path}: tensors of the wrong shape for the config: "
        "[llm_projector.layers.0.bias [3] (expected [32])] (1 in all)"
    )


def test_missing_folder_file_and_weights_are_named(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model folder {tmp_path / 'absent'} does not exist"):
        XSamModel.from_pretrained(tmp_path / "absent")
    folder = _saved(model, tmp_path / "m")
    with pytest.raises(NotADirectoryError, match="is a file"):
        XSamModel.from_pretrained(folder / "config.json")
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        XSamModel.from_pretrained(folder)


def test_broken_shard_index_is_named(model, tmp_path):
    folder = _saved(model, tmp_path / "m", max_shard_bytes=2_000_000)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard} not found"):
        XSamModel.from_pretrained(folder)
    (folder / INDEX_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"{folder / INDEX_NAME} is not a safetensors index"):
        XSamModel.from_pretrained(folder)
    (folder / INDEX_NAME).write_text(json.dumps({"weight_map": {"x": "../../elsewhere.safetensors"}}))
    with pytest.raises(ValueError, match="file names in the same folder"):
        XSamModel.from_pretrained(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["image_encoder"].update(num_hidden_layers="four"),
            r"XSamConfig\.image_encoder\.num_hidden_layers: expected int, got str 'four'",
        ),
        (
            lambda c: c.update(mask_decoder=[1, 2]),
            r"XSamConfig\.mask_decoder: expected a mapping of MaskDecoderConfig fields, got list",
        ),
        (
            lambda c: c["connector"].update(scale_factors="2,1,0.5"),
            r"XSamConfig\.connector\.scale_factors: expected a list of float, got str",
        ),
        (
            lambda c: c["language_model"]["hf_config"].update(num_hidden_layers="four"),
            r"cannot be built from this config \(.*'num_hidden_layers'.*'four'",
        ),
        (lambda c: c["language_model"]["hf_config"].pop("hidden_size"), r"missing key 'hidden_size'"),
        (lambda c: c["image_encoder"].update(num_attention_heads=5), r"cannot be built.*divisible"),
    ],
    ids=["int", "mapping", "tuple", "hf-config-type", "hf-config-key", "inconsistent"],
)
def test_wrong_config_values_name_the_file_and_the_key(model, tmp_path, change, message):
    folder = _saved(model, tmp_path / "m")
    _edit_config(folder, change)
    with pytest.raises(ValueError, match=message) as error:
        XSamModel.from_pretrained(folder)
    assert str(error.value).startswith(f"{folder / 'config.json'}: ")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe binary"])
def test_config_that_is_not_json_is_named(model, tmp_path, text):
    folder = _saved(model, tmp_path / "m")
    (folder / "config.json").write_bytes(text)
    with pytest.raises(ValueError, match=f"{folder / 'config.json'} is not valid JSON"):
        XSamModel.from_pretrained(folder)


def test_describe_reports_a_bad_model_in_one_line(model, tmp_path, capsys):
    from xsam.cli import main

    assert main(["describe", "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"model folder {tmp_path / 'missing'} does not exist" in err
    folder = _saved(model, tmp_path / "m")
    (folder / WEIGHTS_NAME).write_text("not weights")
    assert main(["describe", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{folder / WEIGHTS_NAME} is not a readable safetensors file" in err
    _saved(model, folder)
    assert main(["describe", "--model", str(folder)]) == 0
    assert "total" in capsys.readouterr().out
