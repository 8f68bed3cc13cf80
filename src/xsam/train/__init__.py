"""Training: stage presets, optimizer groups and schedules, the Accelerate loop, resumable checkpoints."""

from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from .loop import TrainArguments, compute_loss, language_model_loss, train
from .optim import build_optimizer, build_scheduler, parameter_groups
from .stages import StageConfig, align_pretrain, mixed_finetune, seg_finetune, stage_preset

__all__ = [
    "CheckpointError",
    "StageConfig",
    "TrainArguments",
    "align_pretrain",
    "build_optimizer",
    "build_scheduler",
    "compute_loss",
    "language_model_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "mixed_finetune",
    "parameter_groups",
    "prune_checkpoints",
    "save_checkpoint",
    "seg_finetune",
    "stage_preset",
    "train",
    "verify_checkpoint",
]
