"""``save_pretrained`` / ``from_pretrained`` storage: ``config.json`` + safetensors (sharded when large).

Loading builds the model on the meta device and assigns the tensors read from the files, so a
full-size model never needs two copies of its weights in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


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


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
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
) -> None:
    """Write config + weights (+ whatever ``extra_writer`` puts in the folder) atomically per file.

    Everything is written to a temporary folder beside ``directory`` first, so a failure leaves the
    target untouched; old weight files in the target are removed before the new ones move in.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shards = _shards({k: v.detach().contiguous().cpu() for k, v in state.items()}, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], staging / WEIGHTS_NAME, metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, staging / name, metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in state.values())
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
