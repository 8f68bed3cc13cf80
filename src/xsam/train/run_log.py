"""The run's record: ``log.jsonl`` (one JSON line per optimisation step, main process) and the console.

Step lines hold the step, epoch, learning rate, mean losses, gradient norm and every rank's sources; with
``skip_bad_samples`` also ``skipped_samples`` (source -> bad records skipped so far), and the run ends
with a ``{"skipped_samples": ...}`` line. The last line holds every rank's parameter checksum.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from ..data.sources import SKIPPED_RECORDS


class RunLog:
    """``log.jsonl`` (every step, main process) plus console lines every ``log_every`` steps.

    Args:
        accelerator: the run's accelerator (gathers every rank's micro-batch records).
        path: the ``log.jsonl`` file, appended to.
        log_every: console and tracker period in steps.
        progress: the progress bar console lines are written through.
        count_skipped: log the bad records skipped so far (``skip_bad_samples`` runs).
    """

    def __init__(
        self, accelerator: Accelerator, path: Path, log_every: int, progress: tqdm, *, count_skipped: bool
    ) -> None:
        self.accelerator, self.path, self.log_every, self.progress = accelerator, path, log_every, progress
        self.count_skipped = count_skipped
        self.skipped: dict[str, set[int]] = {}
        self.window_start, self.window_samples = time.perf_counter(), 0
        self.window: dict[str, list] = {"sources": [], "logs": [], "skipped": []}

    def add(self, source: str, logs: dict[str, float], meta: Sequence[Mapping[str, Any]]) -> None:
        """Record one micro-batch of this rank: its source, loss terms and the samples' ``meta``."""
        self.window["sources"].append(source)
        self.window["logs"].append(logs)
        self.window["skipped"] += [list(item) for sample in meta for item in sample.get(SKIPPED_RECORDS, ())]

    def skipped_counts(self) -> dict[str, int]:
        """Source -> distinct bad records skipped so far (main process)."""
        return {source: len(indices) for source, indices in sorted(self.skipped.items())}

    def restore_skipped(self, skipped: Mapping[str, Sequence[int]]) -> None:
        self.skipped = {source: set(indices) for source, indices in skipped.items()}

    def skipped_state(self) -> dict[str, list[int]]:
        """What a checkpoint keeps of the skipped records (JSON-able)."""
        return {source: sorted(indices) for source, indices in sorted(self.skipped.items())}

    def step(self, step: int, epoch: int, lr: float, grad_norm: float | None, batch_size: int) -> None:
        """Gather every rank's window of micro-batches since the last step; main writes the step line."""
        local, self.window = self.window, {"sources": [], "logs": [], "skipped": []}
        gathered = gather_object([local])
        self.window_samples += batch_size * len(local["logs"]) * self.accelerator.num_processes
        if not self.accelerator.is_main_process:
            return
        for source, index in (item for rank in gathered for item in rank["skipped"]):
            self.skipped.setdefault(source, set()).add(int(index))
        record = self._record(step, epoch, lr, grad_norm, gathered)
        if step % self.log_every == 0:
            self._console(step, record)
        self.append(record)
        self.progress.set_postfix(loss=f"{record.get('loss', float('nan')):.4g}")

    def _record(self, step: int, epoch: int, lr: float, grad_norm: float | None, gathered: list) -> dict:
        per_batch = [logs for rank in gathered for logs in rank["logs"]]
        keys = sorted({key for logs in per_batch for key in logs})
        means = {key: sum(logs[key] for logs in per_batch if key in logs) / len(per_batch) for key in keys}
        record = {"step": step, "epoch": epoch, "lr": lr, **means, "grad_norm": grad_norm}
        record["sources"] = [rank["sources"] for rank in gathered]
        if self.count_skipped:
            record["skipped_samples"] = self.skipped_counts()
        return record

    def _console(self, step: int, record: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - self.window_start
        record["samples_per_s"] = self.window_samples / max(elapsed, 1e-9)
        self.window_start, self.window_samples = time.perf_counter(), 0
        text = " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float))
        self.progress.write(f"step {step}: {text}")
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=step)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one line (main process)."""
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def finish(self, module: nn.Module, sources: Sequence[str]) -> None:
        """The closing lines: skipped records per source (also on the console) and parameter checksums."""
        if self.count_skipped:
            counts = {source: len(self.skipped.get(source, ())) for source in sources}
            self.append({"skipped_samples": counts})
            listed = ", ".join(f"{source}: {count}" for source, count in counts.items())
            self.accelerator.print(f"skipped {sum(counts.values())} bad sample(s) ({listed})")
        log_parameter_checksums(self.accelerator, module, self.path)


def log_parameter_checksums(accelerator: Accelerator, module: nn.Module, path: Path) -> None:
    """Append every rank's float64 parameter sum to the log: replicas that drifted apart show here."""
    with torch.no_grad():
        checksum = float(sum(p.detach().double().sum() for p in module.parameters()))
    gathered = gather_object([checksum])
    if accelerator.is_main_process:
        with path.open("a") as handle:
            handle.write(json.dumps({"final_parameter_checksums": gathered}) + "\n")
