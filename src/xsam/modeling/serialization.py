"""``save_pretrained`` / ``from_pretrained`` storage: ``config.json`` + safetensors (sharded when large).

Writing streams one tensor at a time (:func:`write_safetensors`) and loading builds the model on the
meta device and assigns the tensors read from the files, so a full-size model never needs two copies
of its weights in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
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
    """Write config + weights (+ whatever ``extra_writer`` puts in the folder), replacing ``directory``
    atomically: the folder holds the complete old model or the complete new one, never a mix.

    ``dtype`` stores floating tensors in that dtype, cast one tensor at a time while writing.

    Everything is written to a staging folder ``.{name}-staging-XXXXXXXX`` beside ``directory``. Files
    the user keeps in ``directory`` beside the model (anything but the old weight files and the names
    this write produces) are hard-linked (copied where links fail) into it. Two renames then swap the
    folders, ``directory`` -> ``.{name}-old-XXXXXXXX`` and staging -> ``directory``, and the old folder
    is removed last. Stale folders of an earlier, killed write to ``directory`` are cleaned up first
    (:func:`remove_stale_staging`).

    Crash windows: killed while writing, ``directory`` is untouched and the staging folder is removed
    by the next write; killed between the two renames (back-to-back system calls), ``directory`` is
    briefly absent while the complete old model sits in ``.{name}-old-*``, and the next write renames it
    back before anything else; killed after them, the new model is in place and the next write removes
    the old folder. An exception while writing (a full disk, a failing ``extra_writer``) removes the
    staging folder and leaves ``directory`` as it was. One writer per target at a time: a second one
    treats the first one's staging folder as stale.

    Raises:
        NotADirectoryError: ``directory`` is an existing file.
    """
    target = Path(directory)
    target = target.resolve() if target.is_symlink() else target  # write where the link points
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} is a file, not a model folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = _new_side_folder(target, "staging")
    try:
        _write_model(staging, state, config, max_shard_bytes=max_shard_bytes, dtype=dtype)
        if extra_writer is not None:
            extra_writer(staging)
        if target.is_dir():
            _carry_unrelated(target, staging)
            shutil.copymode(target, staging)
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_model(
    folder: Path,
    state: dict[str, torch.Tensor],
    config: dict,
    *,
    max_shard_bytes: int,
    dtype: torch.dtype | None,
) -> None:
    """``config.json`` plus one ``model.safetensors`` or numbered shards and their index."""
    # no up-front copies: the writer makes each tensor contiguous on CPU only while writing it
    shards = _shards(state, max_shard_bytes, dtype)
    if len(shards) == 1:
        write_safetensors(folder / WEIGHTS_NAME, shards[0], metadata={"format": "pt"}, dtype=dtype)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(folder / name, shard, metadata={"format": "pt"}, dtype=dtype)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(_stored_nbytes(t, dtype) for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


# The files a write replaces as a whole: a sharded model must not keep an unsharded one's file, or back.
_WEIGHT_FILE = re.compile(rf"model(-\d{{5}}-of-\d{{5}})?\.safetensors|{re.escape(INDEX_NAME)}")
_SIDE_TOKEN_CHARS = 8


def _side_folders(target: Path) -> list[tuple[str, Path]]:
    """``(kind, path)`` of the ``.{name}-staging-*`` / ``.{name}-old-*`` folders beside ``target``,
    oldest first. The exact token length keeps ``.model-v2-staging-*`` out of ``model``'s."""
    pattern = re.compile(rf"\.{re.escape(target.name)}-(staging|old)-[0-9a-f]{{{_SIDE_TOKEN_CHARS}}}")
    if not target.parent.is_dir():
        return []
    found = [(m[1], p) for p in target.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    return sorted(found, key=lambda item: item[1].lstat().st_mtime)


def remove_stale_staging(directory: str | Path) -> None:
    """Clean up after a write to ``directory`` that was killed (see :func:`write_directory`).

    Removes the ``.{name}-staging-*`` and ``.{name}-old-*`` folders beside ``directory``; when
    ``directory`` itself is missing, the newest ``-old-`` folder (the complete previous model, caught
    between the two renames of a swap) is renamed back to ``directory`` instead of being removed.
    :func:`write_directory` and ``xsam convert`` call this before writing to the same target.
    """
    target = Path(directory)
    leftovers = _side_folders(target)
    old = [path for kind, path in leftovers if kind == "old"]
    if old and not target.exists() and not target.is_symlink():
        os.rename(old[-1], target)
    for _, path in leftovers:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def _new_side_folder(target: Path, kind: str) -> Path:
    """Create ``.{name}-{kind}-XXXXXXXX`` beside ``target`` with the ordinary (umask) permissions."""
    while True:
        path = target.parent / f".{target.name}-{kind}-{secrets.token_hex(_SIDE_TOKEN_CHARS // 2)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _carry_unrelated(target: Path, staging: Path) -> None:
    """Link into ``staging`` what the user keeps in ``target`` beside the model, so the swap keeps it."""
    for entry in target.iterdir():
        destination = staging / entry.name
        if _WEIGHT_FILE.fullmatch(entry.name) or os.path.lexists(destination):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), destination)
        elif entry.is_dir():
            shutil.copytree(entry, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, destination)


def _link_or_copy(source: str | Path, destination: str | Path) -> None:
    """A hard link costs no space or time; file systems without them get a copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _swap_in(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, moving an existing ``target`` aside first and removing it last."""
    if not target.exists():
        os.rename(staging, target)
        return
    old = target.parent / f".{target.name}-old-{staging.name.rsplit('-', 1)[1]}"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a saved model, in index order.

    Raises:
        FileNotFoundError: the folder has no weights, or a file the index lists is absent.
        ValueError: the index is not JSON of the expected layout.
    """
    directory = Path(directory)
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    index = directory / INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(
            f"no {WEIGHTS_NAME} or {INDEX_NAME} in {directory}: the folder holds no weights"
        )
    files = [directory / name for name in dict.fromkeys(_weight_map(index).values())]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (listed in {index})")
    return files


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, AttributeError) as error:  # bad JSON or bad UTF-8, or not a JSON object
        raise ValueError(f"{index} is not a safetensors index ({error})") from error
    if not isinstance(weight_map, dict) or not all(
        isinstance(name, str) and name == Path(name).name for name in weight_map.values()
    ):
        raise ValueError(f"{index}: 'weight_map' must map tensor names to file names in the same folder")
    return weight_map


def iter_tensors(
    files: list[Path],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one at a time, floating tensors cast to ``dtype`` when given.

    With ``shapes``, every tensor of a file whose name is in it is checked against it (from the file's
    header, before any tensor is read).

    Raises:
        ValueError: a file is not readable safetensors (truncated, damaged, another format), or a
            tensor's shape differs from ``shapes``; the message names the file and the keys.
    """
    for path in files:
        with _readable(path), safe_open(str(path), framework="pt", device="cpu") as handle:
            names = list(handle.keys())
            if shapes is not None:
                _check_shapes(
                    path, {name: tuple(handle.get_slice(name).get_shape()) for name in names}, shapes
                )
            for name in names:
                tensor = handle.get_tensor(name)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                yield name, tensor.to(device)


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Turn the safetensors reader's errors into a ``ValueError`` that names the file."""
    try:
        yield
    except SafetensorError as error:
        raise ValueError(
            f"{path} is not a readable safetensors file (truncated, damaged or another format): {error}"
        ) from error


def _check_shapes(
    path: Path, found: dict[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> None:
    wrong = [
        f"{name} {list(shape)} (expected {list(expected[name])})"
        for name, shape in found.items()
        if name in expected and shape != tuple(expected[name])
    ]
    if wrong:
        raise ValueError(f"{path}: tensors of the wrong shape for the config: {_preview(wrong)}")


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
