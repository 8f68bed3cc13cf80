"""Resumable training checkpoints (a format separate from ``save_pretrained``).

A checkpoint is a directory ``output_dir/checkpoints/step-NNNNNNNN`` holding Accelerate's
``save_state`` files (model, optimizer, scheduler, per-process Python/NumPy/torch RNG states) plus
``trainer_state.json`` (step, sampler position, skipped records, and the size of every other file). It is
written to a hidden temporary directory and renamed into place with ``os.replace``, so a crash never
leaves a half-written checkpoint that :func:`latest_checkpoint` would pick.

Every file is flushed to disk (``fsync``) before the rename: after a power loss a renamed checkpoint
must not hold blocks of zeros. Loading is strict: :func:`verify_checkpoint` checks every file against its
recorded size, the CRC-32 of every record of the ``torch.save`` zip archives, the safetensors headers and
this process's RNG state (which Accelerate's ``load_state`` would skip silently when damaged), so a
truncated or corrupt file is a :class:`CheckpointError` naming it. The CRC check reads the checkpoint
once more, on resume only.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError, safe_open

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
FILES_KEY = "files"
_PREFIX = "step-"
_TEMPORARY_PREFIX = ".tmp-"
_TORCH_ZIP_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
_RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt; the message names it."""


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"{_PREFIX}{step:08d}"


def checkpoint_step(directory: str | Path) -> int:
    """The step in a checkpoint directory's name (``step-00000012`` -> 12)."""
    return int(Path(directory).name.removeprefix(_PREFIX))


def _file_sizes(directory: Path) -> dict[str, int]:
    """Relative path -> bytes of every file under ``directory`` (FSDP/DeepSpeed states are folders)."""
    return {
        path.relative_to(directory).as_posix(): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _flush_to_disk(directory: Path) -> None:
    """fsync every file and folder under ``directory`` (written by every rank on a shared filesystem)."""
    for path in sorted(directory.rglob("*"), reverse=True):  # files before the folders holding them
        _fsync(path)
    _fsync(directory)


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | Path, state: dict[str, Any], *, keep_last: int | None = None
) -> Path:
    """Write a checkpoint of everything ``accelerator`` prepared plus ``state`` (JSON-able, with a
    ``step`` key); then keep only the ``keep_last`` newest checkpoints (None: all). Every process must
    call it (each saves its own RNG state)."""
    final = checkpoint_dir(output_dir, int(state["step"]))
    temporary = final.with_name(f"{_TEMPORARY_PREFIX}{final.name}")
    if accelerator.is_main_process:
        for leftover in final.parent.glob(f"{_TEMPORARY_PREFIX}*"):  # of a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        recorded = {**state, FILES_KEY: _file_sizes(temporary)}
        (temporary / TRAINER_STATE).write_text(json.dumps(recorded, indent=1))
        _flush_to_disk(temporary)
        if final.exists():  # the same step saved again (e.g. the end of a resumed, finished run)
            shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync(final.parent)  # the rename itself
        if keep_last is not None:
            prune_checkpoints(output_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints under ``output_dir`` (those with a trainer state), oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    complete = [
        path for path in root.iterdir() if path.name.startswith(_PREFIX) and (path / TRAINER_STATE).is_file()
    ]
    return sorted(complete, key=checkpoint_step)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir``, or None."""
    complete = complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` (>= 1) newest complete checkpoints; return the deleted ones."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    doomed = complete_checkpoints(output_dir)[:-keep_last]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def _read_trainer_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a complete checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is corrupt ({error})") from error
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "sampler" not in state:
        raise CheckpointError(f"{path} is corrupt: no integer 'step' and 'sampler' state")
    return state


def _check_sizes(directory: Path, sizes: Mapping[str, int]) -> None:
    """Every file the checkpoint recorded is there with its recorded size."""
    for name, size in sizes.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the checkpoint")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"{path} is {actual} bytes, the checkpoint recorded {size}: truncated?")


def _check_readable(path: Path) -> None:
    """Read a safetensors header, or every record of a ``torch.save`` zip archive against its CRC-32
    (torch itself loads damaged data without a word)."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        elif path.suffix in _TORCH_ZIP_SUFFIXES:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is not None:
                raise CheckpointError(f"{path} is corrupt: its record {damaged} fails its CRC check")
    except (OSError, EOFError, zipfile.BadZipFile, SafetensorError) as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({error})") from error


def _read_rng_states(path: Path) -> dict[str, Any]:
    """This process's RNG states, read strictly: Accelerate ignores a damaged file without a word."""
    try:
        states = accelerate_load(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: no RNG state for this process") from None
    except Exception as error:  # unpickling a damaged file fails in many ways
        raise CheckpointError(f"{path} is truncated or corrupt ({type(error).__name__}: {error})") from error
    if not isinstance(states, dict) or any(key not in states for key in _RNG_KEYS):
        raise CheckpointError(f"{path} is corrupt: it lacks the RNG states {', '.join(_RNG_KEYS)}")
    return states


def verify_checkpoint(directory: str | Path, *, process_index: int = 0) -> dict[str, Any]:
    """Check a checkpoint without restoring it; return its trainer state.

    Raises:
        CheckpointError: ``trainer_state.json`` is unreadable, or a file is missing, has another size than
            recorded, has an unreadable header, or this process's RNG state does not load.
    """
    directory = Path(directory)
    state = _read_trainer_state(directory / TRAINER_STATE)
    _check_sizes(directory, state.get(FILES_KEY, {}))  # checkpoints of older versions recorded none
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            _check_readable(path)
    _read_rng_states(directory / f"random_states_{process_index}.pkl")
    return state


def load_checkpoint(
    accelerator: Accelerator, directory: str | Path, *, verified_state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states in place; return the trainer state.

    ``verified_state``: what :func:`verify_checkpoint` returned for this checkpoint, if already called
    (verifying reads every file once).

    Raises:
        CheckpointError: see :func:`verify_checkpoint`; or restoring failed anyway (the message names
            the checkpoint and the error).
    """
    directory = Path(directory)
    state = verified_state or verify_checkpoint(directory, process_index=accelerator.process_index)
    rng_states = _read_rng_states(directory / f"random_states_{accelerator.process_index}.pkl")
    try:
        accelerator.load_state(str(directory))
    except Exception as error:  # e.g. a file damaged without changing its size
        raise CheckpointError(f"cannot restore {directory}: {type(error).__name__}: {error}") from error
    if not torch.equal(torch.get_rng_state(), rng_states["torch_manual_seed"]):
        raise CheckpointError(f"{directory}: Accelerate did not restore the RNG states")
    return state
