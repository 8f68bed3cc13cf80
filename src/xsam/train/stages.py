"""The three X-SAM training stages as plain config presets (as the release trains them).

A stage says which modules train, at what learning rate (with per-module multipliers), how the rate
moves over training, how hard gradients are clipped and which losses apply. The loop reads these
fields; it has no per-stage branches of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageConfig:
    """One training stage.

    Attributes:
        name: the stage's short name (``seg_finetune`` | ``align_pretrain`` | ``mixed_finetune``).
        trainable: module-name prefixes of ``XSamModel`` that train; None trains every parameter.
        lr: base AdamW learning rate.
        lr_multipliers: module-name prefix -> factor on ``lr`` (the longest matching prefix wins).
        weight_decay: AdamW weight decay, applied to every trainable parameter (norms and biases too).
        betas: AdamW betas.
        grad_clip: max L2 norm of all gradients; None disables clipping.
        warmup_fraction: share of the optimisation steps spent in linear warmup.
        warmup_start_factor: the warmup's first learning-rate factor.
        decay: ``"step"`` (multiply by ``gamma`` at each of ``milestones``) or ``"cosine"`` (to 0).
        milestones: fractions of the optimisation steps at which a step decay happens.
        gamma: step-decay factor.
        closed_set: train the stage-1 closed-set segmentor (``XSamModel.segment_closed_set``): the
            batch's target labels are dataset class ids and the LLM is not run.
        lm_loss: add the language-modelling loss.
        seg_loss: add the Mask2Former loss on the open-vocabulary segmentation outputs.
        image_pad_to_square: SigLIP square padding of training images.
        scale_jitter: SAM-input random scale range (stage 1), None for no jitter.
    """

    name: str
    trainable: tuple[str, ...] | None
    lr: float
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    warmup_fraction: float = 0.03
    warmup_start_factor: float = 1e-5
    decay: str = "cosine"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    closed_set: bool = False
    lm_loss: bool = True
    seg_loss: bool = False
    image_pad_to_square: bool = False
    scale_jitter: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.decay not in ("step", "cosine"):
            raise ValueError(f"decay must be 'step' or 'cosine', got {self.decay!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not (self.closed_set or self.lm_loss or self.seg_loss):
            raise ValueError(f"stage {self.name!r} has no loss")
        if not self.scale_jitter:  # () means "no jitter", as None does
            self.scale_jitter = None


def seg_finetune() -> StageConfig:
    """Stage 1: the SAM segmentor with a closed-set (COCO panoptic) head, no LLM; 36 epochs with step
    decay at epochs 24 and 30."""
    return StageConfig(
        name="seg_finetune",
        trainable=("segmentation_encoder", "connector", "pixel_decoder", "mask_decoder", "closed_set_head"),
        lr=1e-4,
        lr_multipliers={"segmentation_encoder": 0.1},
        weight_decay=0.05,
        grad_clip=0.01,
        decay="step",
        milestones=(24 / 36, 30 / 36),
        closed_set=True,
        lm_loss=False,
        scale_jitter=(0.1, 2.0),
    )


def align_pretrain() -> StageConfig:
    """Stage 2: only the two projectors train, on captions (LM loss), SigLIP input padded to square."""
    return StageConfig(
        name="align_pretrain",
        trainable=("image_projector", "seg_projector"),
        lr=1e-3,
        weight_decay=0.0,
        grad_clip=1.0,
        image_pad_to_square=True,
    )


def mixed_finetune() -> StageConfig:
    """Stage 3: every parameter trains on the task mixture (LM + open-vocabulary segmentation loss)."""
    return StageConfig(
        name="mixed_finetune",
        trainable=None,
        lr=4e-5,
        lr_multipliers={"segmentation_encoder": 0.1, "image_encoder": 0.1},
        weight_decay=0.05,
        grad_clip=1.0,
        seg_loss=True,
    )


STAGES = {"seg_finetune": seg_finetune, "align_pretrain": align_pretrain, "mixed_finetune": mixed_finetune}


def stage_preset(name: str, **overrides: Any) -> StageConfig:
    """The preset called ``name`` (also ``1``/``2``/``3`` and ``s1``/``s2``/``s3``), with ``overrides``
    of its fields; ``lr_multipliers`` are merged into the preset's (a prefix given replaces the
    preset's factor for it) and ``scale_jitter=()`` turns the jitter off.

    Raises:
        ValueError: unknown stage or field, or an invalid value.
    """
    aliases = {"1": "seg_finetune", "2": "align_pretrain", "3": "mixed_finetune"}
    key = aliases.get(name.lower().removeprefix("s"), name)
    if key not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose from {sorted(STAGES)} or 1/2/3")
    stage = STAGES[key]()
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(StageConfig)})
    if unknown:
        raise ValueError(f"unknown stage field(s) {', '.join(unknown)}")
    if "lr_multipliers" in overrides:
        overrides["lr_multipliers"] = {**stage.lr_multipliers, **overrides["lr_multipliers"]}
    return dataclasses.replace(stage, **overrides)
