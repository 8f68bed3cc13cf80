"""What a training run may do with its output folder: start afresh, resume, or replace an old run.

A run writes ``log.jsonl``, ``checkpoints/`` and ``final/`` into its folder. Starting a new run over an
old one would mix the two (the old run's later checkpoints would win a later ``--resume``), so a folder
that is not empty is refused unless the run resumes it or is told to overwrite it; overwriting removes
those three entries and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINTS_DIR, latest_checkpoint, verify_checkpoint

LOG_FILE = "log.jsonl"
FINAL_DIR = "final"
RUN_ENTRIES = (CHECKPOINTS_DIR, FINAL_DIR, LOG_FILE)
"""What a run writes into its folder, and all that ``overwrite`` removes."""


@dataclass(frozen=True)
class RunFolder:
    """The decision about one output folder.

    Attributes:
        path: the folder.
        checkpoint: the checkpoint to resume from, or None for a fresh run.
        previous: entries of an earlier run to remove before starting (``overwrite``).
    """

    path: Path
    checkpoint: Path | None = None
    previous: tuple[Path, ...] = ()


def _listing(entries: list[Path]) -> str:
    names = [f"{entry.name}/" if entry.is_dir() else entry.name for entry in entries[:5]]
    return ", ".join(names) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")


def plan_run_folder(output_dir: str | Path, *, resume: bool, overwrite: bool) -> RunFolder:
    """Decide how a run uses ``output_dir``; nothing is changed yet (see :func:`open_run_folder`).

    A missing or empty folder starts a fresh run (with ``resume`` too: a restart script may always pass
    it); ``resume`` continues from the folder's latest checkpoint; ``overwrite`` starts afresh after
    removing the previous run's entries.

    Raises:
        ValueError: both ``resume`` and ``overwrite``.
        NotADirectoryError: ``output_dir`` is a file.
        FileExistsError: the folder is not empty and neither ``resume`` nor ``overwrite`` is given.
        FileNotFoundError: ``resume`` of a non-empty folder that holds no complete checkpoint.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in --output and --overwrite replaces it: pass one")
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--output {path} is a file, not a folder")
    entries = sorted(path.iterdir()) if path.is_dir() else []
    if overwrite:
        return RunFolder(path, previous=tuple(entry for entry in entries if entry.name in RUN_ENTRIES))
    if not entries:
        return RunFolder(path)
    if not resume:
        raise FileExistsError(
            f"--output {path} is not empty ({_listing(entries)}); pass --resume to continue the run in it, "
            f"or --overwrite to start afresh (removes {', '.join(RUN_ENTRIES)})"
        )
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(
            f"--resume: {path} holds no complete checkpoint ({_listing(entries)}); "
            "pass --overwrite to start afresh"
        )
    return RunFolder(path, checkpoint=checkpoint)


def check_run_folder(
    output_dir: str | Path, *, resume: bool, overwrite: bool, process_index: int = 0
) -> tuple[RunFolder, dict[str, Any] | None]:
    """:func:`plan_run_folder`, and the trainer state of the checkpoint to resume from, verified
    (:func:`~xsam.train.checkpoint.verify_checkpoint`); None for a fresh run. Changes nothing."""
    folder = plan_run_folder(output_dir, resume=resume, overwrite=overwrite)
    if folder.checkpoint is None:
        return folder, None
    return folder, verify_checkpoint(folder.checkpoint, process_index=process_index)


def open_run_folder(folder: RunFolder, resume_step: int | None) -> list[str]:
    """Carry out the plan (main process only): remove the previous run's entries, create the folder, and
    on resume cut ``log.jsonl`` back to the checkpoint's step. Return lines saying what changed."""
    notes = []
    if folder.previous:
        notes.append(f"--overwrite: removed {_listing(list(folder.previous))} from {folder.path}")
    for entry in folder.previous:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    folder.path.mkdir(parents=True, exist_ok=True)
    if resume_step is not None:
        dropped = trim_log(folder.path / LOG_FILE, resume_step)
        if dropped:
            notes.append(f"dropped {dropped} line(s) logged after step {resume_step} from {LOG_FILE}")
    return notes


def trim_log(path: Path, step: int) -> int:
    """Keep the step records of ``log.jsonl`` up to ``step`` (a resumed run logs the rest again) and
    drop everything after, including a last line cut short by a kill; return the lines dropped.

    Raises:
        ValueError: a line other than the last is not JSON (the log was edited or damaged).
    """
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # written when the run was killed
            raise ValueError(f"{path}:{number} is not a JSON line") from None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    if len(kept) < len(lines):
        partial = path.with_name(f".{path.name}.tmp")  # a kill while writing must not cut the log
        partial.write_text("".join(f"{line}\n" for line in kept))
        os.replace(partial, path)
    return len(lines) - len(kept)
