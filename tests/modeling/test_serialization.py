"""The streaming safetensors writer: files the reference readers load bit-exactly, in the standard layout."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from xsam.modeling.serialization import SAFETENSORS_DTYPES, write_safetensors


def _as_bytes(tensor: torch.Tensor) -> bytes:
    """Bit pattern of a tensor (``torch.equal`` would call NaN != NaN and -0.0 == 0.0)."""
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def _assert_bit_exact(expected: torch.Tensor, actual: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert _as_bytes(actual) == _as_bytes(expected)


def _read_header(path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return length, json.loads(raw[8 : 8 + length])


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    special = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])
    matrix = torch.randn(6, 10)
    return {
        "float32": torch.cat([torch.randn(5), special]),
        "bfloat16": torch.cat([torch.randn(7), special]).bfloat16(),
        "float16": torch.cat([torch.randn(3), special]).half().reshape(7, 1),
        "int64": torch.tensor([[-(2**62), 2**62 + 1, 0]]),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "empty": torch.empty(0, 4),
        "empty_bf16": torch.empty(3, 0, dtype=torch.bfloat16),
        "transposed": matrix.t(),
        "strided": matrix[::2, 1::3],
        "expanded": torch.arange(3, dtype=torch.int16).expand(4, 3),
    }


def test_reference_readers_load_every_tensor_bit_exactly(tensors, tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt", "note": "ünïcode"})
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        _assert_bit_exact(tensor, loaded[name])
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "ünïcode"}
        assert set(handle.keys()) == set(tensors)
        for name, tensor in tensors.items():
            _assert_bit_exact(tensor, handle.get_tensor(name))
            assert handle.get_slice(name).get_shape() == list(tensor.shape)


def test_layout_is_aligned_and_gapless(tensors, tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    length, header = _read_header(path)
    assert length % 8 == 0
    assert path.read_bytes()[8 : 8 + length].decode().rstrip(" ").endswith("}")  # padded with spaces
    entries = sorted((v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"])
    end = 0
    for entry in entries:
        begin, stop = entry["data_offsets"]
        itemsize = torch.empty(0, dtype=_dtype(entry["dtype"])).element_size()
        assert begin == end and begin % itemsize == 0  # contiguous and aligned to its element size
        end = stop
    assert 8 + length + end == path.stat().st_size


def _dtype(name: str) -> torch.dtype:
    return {v: k for k, v in SAFETENSORS_DTYPES.items()}[name]


def test_file_matches_the_reference_writer_byte_for_byte_in_data(tmp_path):
    """Same tensors in the order the reference writer uses: same tensor bytes, same header content."""
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.ones(2, dtype=torch.bfloat16)}
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    write_safetensors(ours, tensors, metadata={"format": "pt"})
    save_file(tensors, theirs, metadata={"format": "pt"})
    (length_ours, header_ours), (length_theirs, header_theirs) = _read_header(ours), _read_header(theirs)
    assert header_ours == header_theirs
    assert ours.read_bytes()[8 + length_ours :] == theirs.read_bytes()[8 + length_theirs :]


def test_metadata_is_optional_and_must_be_text(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"x": torch.zeros(2)})
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() is None
    with pytest.raises(ValueError, match="strings"):
        write_safetensors(path, {"x": torch.zeros(2)}, metadata={"step": 3})


def test_unsupported_inputs_are_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    with pytest.raises(ValueError, match="reserved"):
        write_safetensors(path, {"__metadata__": torch.zeros(1)})
    with pytest.raises(ValueError, match="dense"):
        write_safetensors(path, {"s": torch.eye(3).to_sparse()})


def test_memory_mapped_sources_are_written_without_change(tmp_path):
    """The converter's case: tensors from ``torch.load(mmap=True)`` go straight to the file."""
    source = {"w": torch.randn(64, 32).bfloat16(), "b": torch.randn(32)}
    torch.save(source, tmp_path / "src.bin")
    mapped = torch.load(tmp_path / "src.bin", mmap=True, weights_only=True)
    write_safetensors(tmp_path / "t.safetensors", mapped)
    loaded = load_file(tmp_path / "t.safetensors")
    for name, tensor in source.items():
        _assert_bit_exact(tensor, loaded[name])


def test_dtype_casts_floating_tensors_only_while_writing(tmp_path):
    from safetensors.torch import load_file

    from xsam.modeling.serialization import write_safetensors

    tensors = {"w": torch.randn(3, 4), "ids": torch.arange(5)}
    write_safetensors(tmp_path / "m.safetensors", tensors, dtype=torch.bfloat16)
    loaded = load_file(tmp_path / "m.safetensors")
    assert loaded["w"].dtype == torch.bfloat16 and torch.equal(loaded["w"], tensors["w"].bfloat16())
    assert loaded["ids"].dtype == torch.int64 and torch.equal(loaded["ids"], tensors["ids"])
    assert tensors["w"].dtype == torch.float32  # the caller's tensors are untouched
