"""A thin training loop on HF Accelerate, shared by all three stages (STYLE principle 11).

Accelerate drives the devices (DDP, FSDP, DeepSpeed via ``accelerate launch --config_file``), mixed
precision and gradient accumulation; the stage preset picks parameters, learning rates and losses.
The data loader is *not* handed to Accelerate: :class:`SourceGroupedSampler` already shards per rank
so that every optimisation step draws from one source on all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import XSamConfig
from ..data.collate import Batch, collate
from ..data.mixture import MixtureDataset, SourceGroupedSampler
from ..data.sources import BadSampleError, RecordDataset
from ..distributed import finish_processes
from ..losses.criterion import SegmentationCriterion, count_target_masks
from ..modeling.pretrained import copy_tokenizer, load_config, resolve_model_directory, tokenizer_directory
from ..modeling.xsam import XSamModel
from ..tokens import IGNORE_INDEX, load_tokenizer
from .checkpoint import TRAINER_STATE, CheckpointError, load_checkpoint, save_checkpoint
from .optim import build_optimizer, build_scheduler
from .run_folder import FINAL_DIR, LOG_FILE, RunFolder, check_run_folder, open_run_folder
from .run_log import RunLog
from .stages import StageConfig, stage_preset


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
        resume: continue from the latest checkpoint in ``output_dir``, exactly as if never stopped (a
            missing or empty ``output_dir`` starts afresh; a non-empty one without a checkpoint is an error).
        overwrite: start afresh in a non-empty ``output_dir`` after removing the previous run's
            ``checkpoints/``, ``final/`` and ``log.jsonl`` (anything else stays). Without ``resume`` or
            ``overwrite`` a non-empty ``output_dir`` is refused.
        keep_last: keep only this many newest checkpoints (None: all of them).
        skip_bad_samples: replace a record that cannot be built (unreadable image, malformed
            annotation) by the next good one of its source, instead of stopping; the skipped records
            are counted per source in ``log.jsonl`` and on the console.
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
    overwrite: bool = False
    keep_last: int | None = None
    skip_bad_samples: bool = False
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
    """The model to train: ``args.init`` if given (see :func:`load_init_model`), else a random
    ``args.config`` model (with a closed-set head for stage 1)."""
    if args.init is not None:
        return load_init_model(args.init)
    config = XSamConfig.preset(args.config)
    if stage.closed_set and config.mask_decoder.num_closed_set_classes is None:
        config.mask_decoder.num_closed_set_classes = args.num_closed_set_classes
    return XSamModel(config).train()


def load_init_model(directory: str | Path) -> XSamModel:
    """``XSamModel.from_pretrained(directory, allow_missing=True)`` in training mode.

    Raises:
        FileNotFoundError: no such folder, or no config or weights in it.
        ValueError: the config or the weights cannot be read (truncated, corrupt, mismatched); the
            message names the folder and the underlying error.
    """
    try:
        return XSamModel.from_pretrained(directory, allow_missing=True).train()
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as error:
        raise ValueError(f"cannot load the model {directory}: {one_line(error)}") from error


def initial_config_and_tokenizer(init: str | None, preset: str) -> tuple[XSamConfig, Any]:
    """The model config and tokenizer: of the --init folder when given, else of --preset.

    Raises:
        FileNotFoundError: the --init folder does not exist.
        ValueError: its config or tokenizer cannot be read (the message names the folder).
    """
    if init is None:
        config = XSamConfig.preset(preset)
        return config, load_tokenizer(None, tokens=config.tokens)
    if not resolve_model_directory(init).is_dir():
        raise FileNotFoundError(f"--init {init}: no such folder")
    try:
        config = load_config(init)
    except FileNotFoundError:
        raise
    except Exception as error:  # json and config errors of a damaged file
        raise ValueError(f"--init {init}: cannot read the model config: {one_line(error)}") from error
    tokenizer_folder = tokenizer_directory(init)
    try:
        return config, load_tokenizer(tokenizer_folder, tokens=config.tokens)
    except Exception as error:  # the tokenizers library raises bare Exceptions for damaged files
        raise ValueError(
            f"--init {init}: cannot read the tokenizer in {tokenizer_folder}: {one_line(error)}"
        ) from error


def one_line(error: BaseException) -> str:
    """An exception's message on one line, after its type unless it is a ValueError or OSError (whose
    messages say what is wrong); a KeyError's message without its quotes."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    text = " ".join(str(message).split())
    return text if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {text}"


def as_mixture(dataset: Mapping[str, Sequence[Any]] | MixtureDataset | None) -> MixtureDataset:
    if dataset is None:
        raise ValueError("TrainArguments.dataset is required")
    return dataset if isinstance(dataset, MixtureDataset) else MixtureDataset(dataset)


def _skip_bad_samples(dataset: MixtureDataset) -> None:
    for source in dataset.datasets.values():
        if isinstance(source, RecordDataset):
            source.skip_bad_samples = True


def _data_loader(
    dataset: MixtureDataset, sampler: SourceGroupedSampler, args: TrainArguments, model: XSamModel
) -> DataLoader:
    pad_token_id = int(model.config.language_model.hf_config.get("pad_token_id") or 0)
    return DataLoader(
        dataset,
        args.batch_size,
        sampler=sampler,
        collate_fn=partial(collate, pad_token_id=pad_token_id),
        num_workers=args.num_workers,
        generator=torch.Generator(),  # reseeded every epoch by _epoch_batches
    )


def _epoch_batches(loader: DataLoader, seed: int, epoch: int) -> Iterator[Batch]:
    """The loader's batches of one epoch.

    Creating a DataLoader iterator draws the workers' base seed from ``loader.generator``, or from the
    global torch RNG when it has none: a resumed run would then draw once more from the RNG just restored
    than the interrupted run did. So the loader has its own generator, seeded by ``(seed, epoch)``.
    """
    loader.generator.manual_seed((seed * 1_000_003 + epoch) % 2**63)
    try:
        yield from loader
    except BadSampleError as error:
        message = _without_worker_traceback(str(error))
        raise BadSampleError(f"{message} (--skip-bad-samples replaces such samples)") from error


def _without_worker_traceback(message: str) -> str:
    """A worker's error reaches the main process as "Caught ... Original Traceback ... Error: message";
    keep the message."""
    marker = f"{BadSampleError.__name__}: "
    return message.rsplit(marker, 1)[1].strip() if "\n" in message and marker in message else message


def _accelerator(args: TrainArguments, output_dir: Path) -> Accelerator:
    accelerator = Accelerator(
        gradient_accumulation_steps=args.grad_accum,
        mixed_precision=args.mixed_precision,
        log_with=args.log_with,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,  # stepped by hand, once per optimisation step
        # a step without <SEG> (chat) leaves the segmentor unused in stage 3
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if args.log_with is not None and not accelerator.log_with:  # Accelerate only warns
        raise ValueError(f"--log-with {args.log_with}: the tracker's package is not installed")
    return accelerator


def _open_folder(accelerator: Accelerator, folder: RunFolder, resume_state: dict[str, Any] | None) -> None:
    accelerator.wait_for_everyone()  # every rank has looked at the folder before the main one changes it
    if accelerator.is_main_process:
        for note in open_run_folder(folder, None if resume_state is None else int(resume_state["step"])):
            accelerator.print(note)
    accelerator.wait_for_everyone()


@dataclass
class _Position:
    """Where a run is: optimisation steps done, the epoch, and this epoch's micro-batches trained on."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0


class _Session:
    """One run's moving parts, from the prepared model to the final save."""

    def __init__(
        self, args: TrainArguments, stage: StageConfig, accelerator: Accelerator, model: XSamModel
    ) -> None:
        self.args, self.stage, self.accelerator = args, stage, accelerator
        self.output_dir = Path(args.output_dir)
        if args.gradient_checkpointing:
            llm = model.language_model
            # transformers renamed it (the old name warns and goes in v6); early 5.x only has the old one
            getattr(llm, "activation_checkpointing_enable", llm.gradient_checkpointing_enable)()
        optimizer = build_optimizer(model, stage)
        self.dataset = as_mixture(args.dataset)
        if args.skip_bad_samples:
            _skip_bad_samples(self.dataset)
        world, rank = accelerator.num_processes, accelerator.process_index
        self.sampler = SourceGroupedSampler(self.dataset.lengths, args.batch_size, world, rank, args.seed)
        self.loader = _data_loader(self.dataset, self.sampler, args, model)
        batches_per_epoch = len(self.sampler) // args.batch_size
        if batches_per_epoch == 0:
            raise ValueError("the dataset yields no batch")
        self.total_steps = args.max_steps or math.ceil(args.epochs * batches_per_epoch / args.grad_accum)
        scheduler = build_scheduler(optimizer, stage, self.total_steps)
        self.module, self.optimizer, self.scheduler = accelerator.prepare(
            StageModule(model, closed_set=stage.closed_set), optimizer, scheduler
        )
        self.criterion = SegmentationCriterion(num_points=args.num_points, class_weight=args.class_weight)
        self.position, self.last_saved, self.grad_norm = _Position(), -1, None
        self.restored_skipped: dict[str, list[int]] = {}

    def restore(self, checkpoint: Path, verified_state: dict[str, Any]) -> None:
        """Continue from ``checkpoint``: model, optimizer, scheduler, RNG, sampler and skip counts.
        ``verified_state`` is what :func:`~xsam.train.checkpoint.verify_checkpoint` returned for it."""
        state = load_checkpoint(self.accelerator, checkpoint, verified_state=verified_state)
        try:
            self.sampler.load_state_dict(state["sampler"])
            self.restored_skipped = {
                str(source): [int(index) for index in indices]
                for source, indices in state.get("skipped_records", {}).items()
            }
        except (ValueError, TypeError, AttributeError) as error:
            raise CheckpointError(f"cannot resume from {checkpoint / TRAINER_STATE}: {error}") from error
        step = int(state["step"])
        consumed = self.sampler.position // self.args.batch_size
        self.position, self.last_saved = _Position(step, self.sampler.epoch, consumed), step
        self.accelerator.print(f"resumed from {checkpoint} at step {step}")

    def run(self) -> None:
        """Train until ``total_steps``; checkpoint every ``save_every`` steps and at the end."""
        self.progress = tqdm(
            total=self.total_steps,
            initial=self.position.step,
            disable=not self.accelerator.is_local_main_process,
        )
        log_path, count_skipped = self.output_dir / LOG_FILE, self.args.skip_bad_samples
        self.run_log = RunLog(
            self.accelerator, log_path, self.args.log_every, self.progress, count_skipped=count_skipped
        )
        self.run_log.restore_skipped(self.restored_skipped)
        try:
            self._run_epochs()
        finally:  # an error message then starts on a line of its own
            self.progress.close()

    def _run_epochs(self) -> None:
        position = self.position
        while position.step < self.total_steps:
            self.sampler.set_epoch(position.epoch)
            for batch in _epoch_batches(self.loader, self.args.seed, position.epoch):
                position.consumed += 1
                if self._train_micro_batch(batch) and position.step >= self.total_steps:
                    break
            else:
                position.epoch, position.consumed = position.epoch + 1, 0
        if self.last_saved != position.step:
            self.save()

    def _train_micro_batch(self, batch: Batch) -> bool:
        """Forward and backward one micro-batch; return whether it completed an optimisation step."""
        batch = batch.to(self.accelerator.device)
        with self.accelerator.accumulate(self.module):
            loss, logs = compute_loss(
                self.module, batch, self.stage, self.criterion, accelerator=self.accelerator
            )
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients and self.stage.grad_clip is not None:
                norm = self.accelerator.clip_grad_norm_(self.module.parameters(), self.stage.grad_clip)
                self.grad_norm = float(norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
        self.run_log.add(batch.source, logs, batch.meta)
        if not self.accelerator.sync_gradients:
            return False
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.position.step += 1
        self.progress.update(1)
        self.run_log.step(self.position.step, self.position.epoch, lr, self.grad_norm, self.args.batch_size)
        if self.args.save_every and self.position.step % self.args.save_every == 0:
            self.save()
        return True

    def save(self) -> None:
        sampler_state = self.sampler.state_dict(consumed=self.position.consumed * self.args.batch_size)
        skipped = self.run_log.skipped_state()
        state = {"step": self.position.step, "sampler": sampler_state, "skipped_records": skipped}
        save_checkpoint(self.accelerator, self.output_dir, state, keep_last=self.args.keep_last)
        self.last_saved = self.position.step

    def finish(self) -> Path:
        """Close the log (skip counts, parameter checksums: ranks must agree) and save the final model on
        the main process, with the tokenizer of the ``init`` model if it had its own."""
        unwrapped = self.accelerator.unwrap_model(self.module)
        self.run_log.finish(unwrapped, self.dataset.sources)
        final = self.output_dir / FINAL_DIR
        if self.accelerator.is_main_process:
            unwrapped.model.save_pretrained(final)
            copy_tokenizer(self.args.init, final)
        finish_processes()  # every rank waits for the save
        self.accelerator.end_training()
        return final


def train(args: TrainArguments) -> Path:
    """Run (or resume) one stage; return the ``save_pretrained`` directory of the final model.

    Nothing in ``output_dir`` changes before the model, the data, the optimizer and (on resume) the
    checkpoint are loaded and checked: a bad argument loses nothing.

    Raises:
        FileExistsError: ``output_dir`` is not empty and neither ``resume`` nor ``overwrite`` is set.
        FileNotFoundError: ``resume`` of a non-empty folder without a checkpoint, or a missing ``init``.
        CheckpointError: the checkpoint to resume from is damaged (the message names the file).
        BadSampleError: a record cannot be built (without ``skip_bad_samples``).
        ValueError: other bad arguments or data (a damaged ``init`` model, ...).
    """
    stage = stage_preset(args.stage) if isinstance(args.stage, str) else args.stage
    if args.keep_last is not None and args.keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {args.keep_last}")
    accelerator = _accelerator(args, Path(args.output_dir))
    folder, resume_state = check_run_folder(
        args.output_dir, resume=args.resume, overwrite=args.overwrite, process_index=accelerator.process_index
    )
    set_seed(args.seed)
    model = build_model(args, stage)
    session = _Session(args, stage, accelerator, model)
    if folder.checkpoint is not None and resume_state is not None:
        session.restore(folder.checkpoint, resume_state)
    _open_folder(accelerator, folder, resume_state)  # only now: everything above may still fail
    if args.log_with is not None:
        accelerator.init_trackers("xsam", config={"stage": stage.name, "total_steps": session.total_steps})
    session.run()
    return session.finish()
