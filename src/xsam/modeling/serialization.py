"""``save_pretrained`` / ``from_pretrained`` storage: ``config.json`` + safetensors (sharded when large).

Writing streams one tensor at a time (:func:`write_safetensors`) and loading builds the model on the
meta device and assigns the tensors read from the files, so a full-size model never needs two copies
of its weights in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

# torch dtype -> the safetensors name of it (the format's own spelling, as its readers expect).
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.complex64: "C64",
}
# The reference writer pads the JSON header with spaces so the data starts 8-byte aligned.
_HEADER_ALIGNMENT = 8


def _stored_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a tensor is written in: ``dtype`` for floating tensors when given, else its own."""
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def _stored_nbytes(tensor: torch.Tensor, dtype: torch.dtype | None) -> int:
    return tensor.numel() * _stored_dtype(tensor, dtype).itemsize


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``tensors`` to ``path`` in the safetensors layout, one tensor's bytes at a time.

    Layout: an 8-byte little-endian header length, a JSON header (``__metadata__`` plus ``dtype``,
    ``shape`` and ``data_offsets`` per tensor, space-padded to a multiple of 8 bytes), then each
    tensor's raw little-endian bytes back to back. Tensors may live on any device, be
    non-contiguous, 0-d, empty or memory-mapped: each is made a contiguous CPU tensor only while it
    is written, so at most one tensor is ever copied (none, for contiguous CPU tensors). Wider dtypes
    come first, which keeps every tensor aligned to its element size, as the reference writer does.
    With ``dtype``, floating tensors are cast to it one at a time as they are written.
    """
    for name, tensor in tensors.items():
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved in safetensors headers")
        if _stored_dtype(tensor, dtype) not in SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: safetensors has no dtype for {_stored_dtype(tensor, dtype)}")
        if tensor.layout != torch.strided:
            raise ValueError(f"{name}: only dense (strided) tensors can be saved, not {tensor.layout}")
    if metadata is not None and not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("safetensors metadata values must be strings")
    order = sorted(tensors, key=lambda name: -_stored_dtype(tensors[name], dtype).itemsize)  # stable
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        nbytes = _stored_nbytes(tensor, dtype)
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[_stored_dtype(tensor, dtype)],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _HEADER_ALIGNMENT)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for name in order:
            tensor = tensors[name]
            file.write(_little_endian_bytes(tensor.to(_stored_dtype(tensor, dtype))))


def _little_endian_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's elements as a flat byte view; a copy only when not already contiguous on CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    data = flat.view(torch.uint8)  # bfloat16 and friends have no numpy dtype; bytes always do
    if sys.byteorder == "big" and tensor.element_size() > 1:
        data = data.view(-1, tensor.element_size()).flip(1).reshape(-1)
    return memoryview(data.numpy())


def tied_aliases(module: nn.Module) -> dict[str, str]:
    """Map every duplicate parameter name (e.g. a tied ``lm_head.weight``) to the first name it has."""
    first: dict[int, str] = {}
    aliases = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def _shards(
    state: dict[str, torch.Tensor], max_bytes: int, dtype: torch.dtype | None
) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = _stored_nbytes(tensor, dtype)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def write_directory(
    directory: str | Path,
    state: dict[str, torch.Tensor],
    config: dict,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    extra_writer: Callable[[Path], None] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write config + weights (+ whatever ``extra_writer`` puts in the folder) atomically per file.

    ``dtype`` stores floating tensors in that dtype, cast one tensor at a time while writing.

    Everything is written to a temporary folder beside ``directory`` first, so a failure leaves the
    target untouched; old weight files in the target are removed before the new ones move in.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        # no up-front copies: the writer makes each tensor contiguous on CPU only while writing it
        shards = _shards(state, max_shard_bytes, dtype)
        if len(shards) == 1:
            write_safetensors(staging / WEIGHTS_NAME, shards[0], metadata={"format": "pt"}, dtype=dtype)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(staging / name, shard, metadata={"format": "pt"}, dtype=dtype)
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(_stored_nbytes(t, dtype) for t in state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (staging / INDEX_NAME).write_text(json.dumps(index, indent=2))
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if extra_writer is not None:
            extra_writer(staging)
        target.mkdir(exist_ok=True)
        for old in list(target.glob("model*.safetensors")) + list(target.glob(INDEX_NAME)):
            old.unlink()
        for item in staging.iterdir():
            os.replace(item, target / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a saved model, in index order."""
    directory = Path(directory)
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    index = directory / INDEX_NAME
    if index.is_file():
        names = json.loads(index.read_text())["weight_map"].values()
        return [directory / n for n in dict.fromkeys(names)]
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {directory}")


def iter_tensors(
    files: list[Path], *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one at a time, floating tensors cast to ``dtype`` when given."""
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor = handle.get_tensor(name)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                yield name, tensor.to(device)


def check_keys(expected: set[str], found: set[str], *, strict: bool, source: str) -> None:
    """Raise ``KeyError`` naming missing and unexpected keys (missing ones always, unexpected if strict)."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    problems = []
    if missing:
        problems.append(f"missing keys {_preview(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if problems:
        raise KeyError(f"{source}: " + "; ".join(problems))


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"


def assign_state(module: nn.Module, state: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    """Load ``state`` into a (meta-device) module by assignment, then restore tied parameters."""
    module.load_state_dict(state, strict=False, assign=True)
    for alias, canonical in aliases.items():
        owner_name, _, attr = alias.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        setattr(owner, attr, module.get_parameter(canonical))
