"""Resumable training checkpoints (a format separate from ``save_pretrained``).

A checkpoint is a directory ``output_dir/checkpoints/step-NNNNNNNN`` holding Accelerate's
``save_state`` files (model, optimizer, scheduler, per-process Python/NumPy/torch RNG states) plus
``trainer_state.json`` (step, epoch, sampler position). It is written to a hidden temporary directory
and renamed into place with ``os.replace``, so a crash never leaves a half-written checkpoint that
:func:`latest_checkpoint` would pick.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
_PREFIX = "step-"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"{_PREFIX}{step:08d}"


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write a checkpoint of everything ``accelerator`` prepared plus ``state`` (JSON-able, with a
    ``step`` key). Every process must call it (each saves its own RNG state)."""
    final = checkpoint_dir(output_dir, int(state["step"]))
    temporary = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / TRAINER_STATE).write_text(json.dumps(state, indent=1))
        if final.exists():  # the same step saved again (e.g. the end of a resumed, finished run)
            shutil.rmtree(final)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``output_dir``, or None."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    complete = [
        path for path in root.iterdir() if path.name.startswith(_PREFIX) and (path / TRAINER_STATE).is_file()
    ]
    return max(complete, key=lambda path: int(path.name.removeprefix(_PREFIX)), default=None)


def load_checkpoint(accelerator: Accelerator, directory: str | Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states in place; return the trainer state."""
    directory = Path(directory)
    accelerator.load_state(str(directory))
    return json.loads((directory / TRAINER_STATE).read_text())
