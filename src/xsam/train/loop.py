"""A thin training loop on HF Accelerate, shared by all three stages (STYLE principle 11).

Accelerate drives the devices (DDP, FSDP, DeepSpeed via ``accelerate launch --config_file``), mixed
precision and gradient accumulation; the stage preset picks parameters, learning rates and losses.
The data loader is *not* handed to Accelerate: :class:`SourceGroupedSampler` already shards per rank
so that every optimisation step draws from one source on all ranks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import XSamConfig
from ..data.collate import Batch, collate
from ..data.mixture import MixtureDataset, SourceGroupedSampler
from ..distributed import finish_processes
from ..losses.criterion import SegmentationCriterion, count_target_masks
from ..modeling.pretrained import copy_tokenizer
from ..modeling.xsam import XSamModel
from ..tokens import IGNORE_INDEX
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .optim import build_optimizer, build_scheduler
from .stages import StageConfig, stage_preset

LOG_FILE = "log.jsonl"
FINAL_DIR = "final"


@dataclass
class TrainArguments:
    """What one training run needs.

    Attributes:
        stage: a :class:`StageConfig` or a preset name (``seg_finetune`` / ``align_pretrain`` /
            ``mixed_finetune``, or ``1``/``2``/``3``).
        output_dir: receives ``log.jsonl``, ``checkpoints/`` and ``final/``.
        dataset: source name -> sequence of :class:`~xsam.data.samples.Sample` (wrapped in a
            :class:`MixtureDataset`), or a ready :class:`MixtureDataset` (``build_mixture``'s output).
        init: a ``save_pretrained`` directory to start from (missing modules stay random), or None
            for a random model of the ``config`` preset.
        config: ``"tiny"``, ``"small"`` or ``"official"``, used when ``init`` is None.
        max_steps: optimisation steps; None runs ``epochs`` passes over the data.
        batch_size: samples per device per micro-batch.
        grad_accum: micro-batches per optimisation step.
        mixed_precision: ``"no"`` or ``"bf16"``.
        gradient_checkpointing: recompute the LLM's activations in the backward pass.
        log_every: console / tracker logging period in steps (``log.jsonl`` gets every step).
        save_every: checkpoint period in steps (None: only at the end).
        seed: model init, sampler order and loss sampling.
        resume: continue from the latest checkpoint in ``output_dir`` if there is one.
        num_points: point samples per mask of the segmentation loss (12544 in the release).
        class_weight: weight of the segmentation loss's classification term and matching cost (2.0 in
            the release).
        num_closed_set_classes: closed-set head size given to a fresh stage-1 model (133 for COCO).
        num_workers: data-loader worker processes.
        log_with: an Accelerate tracker name (``"tensorboard"``, ``"wandb"``...) or None.
    """

    stage: StageConfig | str
    output_dir: str | Path
    dataset: Mapping[str, Sequence[Any]] | MixtureDataset | None = None
    init: str | Path | None = None
    config: str = "tiny"
    max_steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    log_every: int = 10
    save_every: int | None = None
    seed: int = 0
    resume: bool = False
    num_points: int = 12544
    class_weight: float = 2.0
    num_closed_set_classes: int = 133
    num_workers: int = 0
    log_with: str | None = None


class StageModule(nn.Module):
    """Routes the stage's forward through ``__call__`` so DDP / FSDP / DeepSpeed see it.

    Stage 1 calls ``XSamModel.segment_closed_set`` (no LLM); the others ``XSamModel.forward``.
    """

    def __init__(self, model: XSamModel, *, closed_set: bool) -> None:
        super().__init__()
        self.model = model
        self.closed_set = closed_set

    def forward(self, inputs: dict[str, Any]) -> Any:
        if self.closed_set:
            return self.model.segment_closed_set(inputs["sam_pixel_values"])
        return self.model(**inputs, labelled_logits_only=inputs.get("labels") is not None)


def language_model_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the supervised tokens.

    ``labels`` ``(B, L)`` with ``-100`` where unsupervised (the spliced ``sequence.labels``); ``logits``
    either ``(B, L, V)`` aligned with them, or ``(N, V)`` at the ``N`` supervised positions only
    (``XSamModel.forward(labelled_logits_only=True)``). Zero (with a gradient path) when nothing is
    supervised.
    """
    shifted_labels = labels[:, 1:]
    if logits.dim() == 2:
        targets = shifted_labels[shifted_labels != IGNORE_INDEX]
        if logits.shape[0] != targets.numel():
            raise ValueError(f"{logits.shape[0]} logit rows for {targets.numel()} supervised labels")
        shifted_logits = logits.float()
    else:
        targets = shifted_labels.flatten()
        shifted_logits = logits[:, :-1].float().flatten(0, 1)
    total = F.cross_entropy(shifted_logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def global_num_masks(batch: Batch, accelerator: Accelerator | None) -> torch.Tensor:
    """Target masks summed over all processes and divided by the world size, at least 1."""
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    count = torch.tensor(float(count_target_masks(batch.targets)), device=device)
    if accelerator is not None and accelerator.num_processes > 1:
        count = accelerator.reduce(count, reduction="sum") / accelerator.num_processes
    return count.clamp(min=1)


def compute_loss(
    model: nn.Module,
    batch: Batch,
    stage: StageConfig,
    criterion: SegmentationCriterion,
    *,
    accelerator: Accelerator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The stage's total loss on one micro-batch and its components as floats.

    ``model`` is a :class:`StageModule` (possibly wrapped by Accelerate). Stage 1: Mask2Former loss of
    the closed-set segmentor (target labels are class ids). Otherwise LM loss and/or the open-vocabulary
    Mask2Former loss on ``output.segmentation`` (absent for batches without ``<SEG>``).
    """
    outputs = model(batch.model_inputs())
    terms: dict[str, torch.Tensor] = {}
    parts: dict[str, float] = {}
    if stage.closed_set:
        class_logits, mask_logits = outputs
        _check_closed_set_labels(batch, num_classes=class_logits.shape[-1] - 1)
        terms["loss_seg"] = _segmentation_loss(
            criterion, class_logits, mask_logits, batch, accelerator, parts
        )
    else:
        if stage.lm_loss:
            terms["loss_lm"] = language_model_loss(outputs.logits, outputs.sequence.labels)
        segmentation = outputs.segmentation
        if stage.seg_loss and segmentation is not None:
            terms["loss_seg"] = _segmentation_loss(
                criterion, segmentation.class_logits, segmentation.mask_logits, batch, accelerator, parts
            )
    if not terms:
        raise ValueError(f"stage {stage.name!r} produced no loss for a {batch.task} batch")
    loss = torch.stack(list(terms.values())).sum()
    logs = {name: float(value.detach()) for name, value in terms.items()}
    logs.update(parts)
    logs["loss"] = float(loss.detach())
    return loss, logs


def _check_closed_set_labels(batch: Batch, num_classes: int) -> None:
    """Stage-1 targets must be ids of the closed-set head's classes."""
    labels = [t.labels for t in batch.targets if t.labels is not None and t.labels.numel()]
    largest = int(torch.cat(labels).max()) if labels else -1
    if largest >= num_classes:
        raise ValueError(
            f"a target has class id {largest} but the closed-set head has {num_classes} classes "
            "(set --num-closed-set-classes to the dataset's class count)"
        )


def _segmentation_loss(
    criterion: SegmentationCriterion,
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    batch: Batch,
    accelerator: Accelerator | None,
    parts: dict[str, float],
) -> torch.Tensor:
    """The summed Mask2Former loss; the final prediction's weighted terms are added to ``parts``."""
    num_masks = global_num_masks(batch, accelerator)
    losses = criterion(class_logits.float(), mask_logits.float(), batch.targets, num_masks=num_masks)
    for name in ("loss_cls", "loss_mask", "loss_dice"):
        if name in losses:
            parts[name] = float(losses[name].detach())
    return losses["loss_seg"]


def build_model(args: TrainArguments, stage: StageConfig) -> XSamModel:
    """The model to train: ``args.init`` if given, else a random ``args.config`` model (with a
    closed-set head for stage 1)."""
    if args.init is not None:
        return XSamModel.from_pretrained(args.init, allow_missing=True).train()
    config = XSamConfig.preset(args.config)
    if stage.closed_set and config.mask_decoder.num_closed_set_classes is None:
        config.mask_decoder.num_closed_set_classes = args.num_closed_set_classes
    return XSamModel(config).train()


def as_mixture(dataset: Mapping[str, Sequence[Any]] | MixtureDataset | None) -> MixtureDataset:
    if dataset is None:
        raise ValueError("TrainArguments.dataset is required")
    return dataset if isinstance(dataset, MixtureDataset) else MixtureDataset(dataset)


class _RunLog:
    """``log.jsonl`` (every step, main process) plus console lines every ``log_every`` steps."""

    def __init__(self, accelerator: Accelerator, path: Path, log_every: int, progress: tqdm) -> None:
        self.accelerator, self.path, self.log_every, self.progress = accelerator, path, log_every, progress
        self.window_start, self.window_samples = time.perf_counter(), 0

    def step(self, step: int, epoch: int, lr: float, grad_norm: float | None, local: dict, samples: int):
        """Gather every rank's micro-batch sources and losses; main writes them. ``local``:
        ``{"sources": [...], "logs": [dict, ...]}`` of this rank's micro-batches."""
        gathered = gather_object([local])
        self.window_samples += samples * self.accelerator.num_processes
        if not self.accelerator.is_main_process:
            return
        per_batch = [logs for rank in gathered for logs in rank["logs"]]
        keys = sorted({key for logs in per_batch for key in logs})
        means = {key: sum(logs[key] for logs in per_batch if key in logs) / len(per_batch) for key in keys}
        record = {"step": step, "epoch": epoch, "lr": lr, **means, "grad_norm": grad_norm}
        record["sources"] = [rank["sources"] for rank in gathered]
        if step % self.log_every == 0:
            elapsed = time.perf_counter() - self.window_start
            record["samples_per_s"] = self.window_samples / max(elapsed, 1e-9)
            self.window_start, self.window_samples = time.perf_counter(), 0
            text = " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float))
            self.progress.write(f"step {step}: {text}")
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=step)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.progress.set_postfix(loss=f"{means.get('loss', float('nan')):.4g}")


def _log_parameter_checksums(accelerator: Accelerator, module: nn.Module, path: Path) -> None:
    """Append every rank's float64 parameter sum to the log: replicas that drifted apart show here."""
    with torch.no_grad():
        checksum = float(sum(p.detach().double().sum() for p in module.parameters()))
    gathered = gather_object([checksum])
    if accelerator.is_main_process:
        with path.open("a") as handle:
            handle.write(json.dumps({"final_parameter_checksums": gathered}) + "\n")


def _accelerator(args: TrainArguments, output_dir: Path) -> Accelerator:
    return Accelerator(
        gradient_accumulation_steps=args.grad_accum,
        mixed_precision=args.mixed_precision,
        log_with=args.log_with,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,  # stepped by hand, once per optimisation step
        # a step without <SEG> (chat) leaves the segmentor unused in stage 3
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _finish(accelerator: Accelerator, module: Any, output_dir: Path, init: str | Path | None) -> Path:
    """Log parameter checksums (ranks must agree) and save the final model on the main process, with
    the tokenizer of the ``init`` model if it had its own."""
    _log_parameter_checksums(accelerator, accelerator.unwrap_model(module), output_dir / LOG_FILE)
    final = output_dir / FINAL_DIR
    if accelerator.is_main_process:
        accelerator.unwrap_model(module).model.save_pretrained(final)
        copy_tokenizer(init, final)
    finish_processes()  # every rank waits for the save
    accelerator.end_training()
    return final


def train(args: TrainArguments) -> Path:
    """Run (or resume) one stage; return the ``save_pretrained`` directory of the final model."""
    stage = stage_preset(args.stage) if isinstance(args.stage, str) else args.stage
    output_dir = Path(args.output_dir)
    accelerator = _accelerator(args, output_dir)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(args, stage)
    if args.gradient_checkpointing:
        llm = model.language_model
        # transformers renamed it (the old name warns and goes in v6); early 5.x only has the old one
        enable = getattr(llm, "activation_checkpointing_enable", llm.gradient_checkpointing_enable)
        enable()
    optimizer = build_optimizer(model, stage)

    dataset = as_mixture(args.dataset)
    sampler = SourceGroupedSampler(
        dataset.lengths, args.batch_size, accelerator.num_processes, accelerator.process_index, args.seed
    )
    pad_token_id = int(model.config.language_model.hf_config.get("pad_token_id") or 0)
    loader = DataLoader(
        dataset,
        args.batch_size,
        sampler=sampler,
        collate_fn=partial(collate, pad_token_id=pad_token_id),
        num_workers=args.num_workers,
    )
    batches_per_epoch = len(sampler) // args.batch_size
    if batches_per_epoch == 0:
        raise ValueError("the dataset yields no batch")
    total_steps = args.max_steps or math.ceil(args.epochs * batches_per_epoch / args.grad_accum)
    scheduler = build_scheduler(optimizer, stage, total_steps)
    module, optimizer, scheduler = accelerator.prepare(
        StageModule(model, closed_set=stage.closed_set), optimizer, scheduler
    )
    criterion = SegmentationCriterion(num_points=args.num_points, class_weight=args.class_weight)
    if args.log_with is not None:
        accelerator.init_trackers("xsam", config={"stage": stage.name, "total_steps": total_steps})

    step, epoch, consumed = 0, 0, 0
    checkpoint = latest_checkpoint(output_dir) if args.resume else None
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        sampler.load_state_dict(state["sampler"])
        step, epoch = int(state["step"]), int(state["sampler"]["epoch"])
        consumed = int(state["sampler"]["position"]) // args.batch_size
        accelerator.print(f"resumed from {checkpoint} at step {step}")

    progress = tqdm(total=total_steps, initial=step, disable=not accelerator.is_local_main_process)
    run_log = _RunLog(accelerator, output_dir / LOG_FILE, args.log_every, progress)
    window: dict[str, list] = {"sources": [], "logs": []}
    last_saved = step if checkpoint is not None else -1
    grad_norm = None

    def save() -> None:
        sampler_state = sampler.state_dict(consumed=consumed * args.batch_size)
        save_checkpoint(accelerator, output_dir, {"step": step, "sampler": sampler_state})

    while step < total_steps:
        sampler.set_epoch(epoch)
        for batch in loader:
            consumed += 1
            batch = batch.to(accelerator.device)
            with accelerator.accumulate(module):
                loss, logs = compute_loss(module, batch, stage, criterion, accelerator=accelerator)
                accelerator.backward(loss)
                if accelerator.sync_gradients and stage.grad_clip is not None:
                    grad_norm = float(accelerator.clip_grad_norm_(module.parameters(), stage.grad_clip))
                optimizer.step()
                optimizer.zero_grad()
            window["sources"].append(batch.source)
            window["logs"].append(logs)
            if not accelerator.sync_gradients:
                continue
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            progress.update(1)
            samples = args.batch_size * len(window["logs"])
            run_log.step(step, epoch, lr, grad_norm, window, samples)
            window = {"sources": [], "logs": []}
            if args.save_every and step % args.save_every == 0:
                save()
                last_saved = step
            if step >= total_steps:
                break
        else:
            epoch, consumed = epoch + 1, 0
    if last_saved != step:
        save()
    progress.close()
    return _finish(accelerator, module, output_dir, args.init)
