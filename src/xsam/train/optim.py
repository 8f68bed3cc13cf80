"""AdamW parameter groups, optimizer and learning-rate schedule of a :class:`StageConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .stages import StageConfig


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def lr_multiplier(name: str, stage: StageConfig) -> float:
    """The factor on ``stage.lr`` of parameter ``name``: the longest matching prefix's, else 1."""
    matching = [prefix for prefix in stage.lr_multipliers if _matches(name, prefix)]
    return stage.lr_multipliers[max(matching, key=len)] if matching else 1.0


def is_trainable(name: str, stage: StageConfig) -> bool:
    """Whether parameter ``name`` (of the bare ``XSamModel``) trains in ``stage``."""
    return stage.trainable is None or any(_matches(name, prefix) for prefix in stage.trainable)


def parameter_groups(model: nn.Module, stage: StageConfig) -> list[dict]:
    """Freeze what ``stage`` does not train (``requires_grad=False``) and group the rest by LR factor.

    A module whose learning-rate factor is 0 is frozen too, so it costs no backward pass or optimizer
    state (e.g. ``--lr-multiplier segmentation_encoder=0`` keeps stage 1's SAM encoder fixed in stage 3).

    Returns AdamW groups ``{"params", "lr", "weight_decay", "lr_multiplier", "name"}`` in first-seen
    order; weight decay applies to every trainable parameter, as in the release.
    """
    groups: dict[float, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        trainable = is_trainable(name, stage) and lr_multiplier(name, stage) != 0
        parameter.requires_grad_(trainable)
        if trainable:
            groups.setdefault(lr_multiplier(name, stage), []).append(parameter)
    if not groups:
        raise ValueError(f"stage {stage.name!r} trains no parameter of this model")
    return [
        {
            "params": params,
            "lr": stage.lr * factor,
            "weight_decay": stage.weight_decay,
            "lr_multiplier": factor,
            "name": f"lr_x{factor:g}",
        }
        for factor, params in groups.items()
    ]


def build_optimizer(model: nn.Module, stage: StageConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (which also freezes the untrained parameters)."""
    return torch.optim.AdamW(parameter_groups(model, stage), lr=stage.lr, betas=stage.betas)


def lr_factor(stage: StageConfig, total_steps: int) -> Callable[[int], float]:
    """``step -> factor`` of the stage's schedule over ``total_steps`` optimisation steps.

    Linear warmup from ``warmup_start_factor`` to 1 over ``ceil(warmup_fraction * total)`` steps, then
    either a step decay (``gamma`` at each milestone fraction) or a cosine to 0 over the rest.
    """
    total = max(1, total_steps)
    warmup = math.ceil(stage.warmup_fraction * total)
    milestones = [round(fraction * total) for fraction in stage.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            start = stage.warmup_start_factor
            return start + (1 - start) * step / warmup
        if stage.decay == "step":
            return stage.gamma ** sum(step >= milestone for milestone in milestones)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, stage: StageConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every group; step it once per optimisation step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(stage, total_steps))
