"""Hungarian matching of decoder queries to ground-truth masks (Mask2Former's matcher).

The cost of giving target ``t`` to query ``q`` is::

    cost_mask * BCE(q, t) + cost_class * (-p_q[label_t]) + cost_dice * dice(q, t)

with ``p_q`` the softmax over the query's class logits and BCE / dice computed on one set of
uniformly random points shared by every pair. Predictions (128²) and targets (1024²) are each sampled
at those normalised points at their own resolution; nothing is resized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .point_sampling import RandomSource, TorchRandom, ignored_at, point_sample

# The official matcher clamps costs to +-1e10 (so that scipy never sees an infeasible matrix) and
# replaces NaN with 0 before the float32 assignment; we do the same so that ties break identically.
_COST_BOUND = 1e10


def pairwise_sigmoid_bce(logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean sigmoid BCE over points for every (prediction, target) pair.

    Args:
        logits: ``(Q, P)`` prediction logits at the points.
        labels: ``(T, P)`` target values in ``[0, 1]`` at the same points.
        valid: optional ``(T, P)`` bool; points outside it do not count and the mean is over the rest.

    Returns:
        ``(Q, T)`` costs.
    """
    num_points = logits.shape[1]
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    if valid is None:
        # The official order of operations (divide first), so that costs match bit for bit.
        return (positive / num_points) @ labels.T + (negative / num_points) @ (1 - labels).T
    weights = valid.to(logits.dtype)
    counts = weights.sum(-1).clamp(min=1)
    return (positive @ (labels * weights).T + negative @ ((1 - labels) * weights).T) / counts


def pairwise_dice(logits: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """Dice loss ``1 - (2|x∩y| + 1) / (|x| + |y| + 1)`` for every pair: ``(Q, P)`` x ``(T, P)`` -> ``(Q, T)``.

    ``x`` is the sigmoid of the logits; with ``valid`` (``(T, P)`` bool) only valid points are summed.
    """
    probs = logits.sigmoid()
    if valid is None:
        numerator = 2 * probs @ labels.T
        denominator = probs.sum(-1)[:, None] + labels.sum(-1)[None, :]
    else:
        weights = valid.to(probs.dtype)
        labels = labels * weights
        numerator = 2 * probs @ labels.T
        denominator = probs @ weights.T + labels.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _linear_sum_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """scipy's assignment on a ``(Q, T)`` cost; rows come back sorted by query index."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as error:  # scipy is a training extra, not an import-time requirement
        raise ImportError("Hungarian matching needs scipy: pip install 'xsam-torch[train]'") from error
    cost = cost.clamp(-_COST_BOUND, _COST_BOUND).nan_to_num(0.0)
    query_idx, target_idx = linear_sum_assignment(cost.detach().cpu().to(torch.float32).numpy())
    return torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(target_idx, dtype=torch.int64)


@torch.no_grad()
def hungarian_match(
    class_logits: Tensor | None,
    mask_logits: Tensor,
    target_labels: Tensor | None,
    target_masks: Tensor,
    *,
    num_points: int = 12544,
    cost_class: float = 2.0,
    cost_mask: float = 5.0,
    cost_dice: float = 5.0,
    rand: RandomSource | None = None,
    ignore_masks: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Match one decoder sample's queries to its targets.

    Makes exactly one random call, ``rand((1, num_points, 2))``, even when there are no targets (the
    official matcher does, and replayed draws must stay in step).

    Args:
        class_logits: ``(Q, C + 1)`` class logits, or None for a class-agnostic match.
        mask_logits: ``(Q, h, w)`` mask logits.
        target_labels: ``(T,)`` int64 indices into the ``C + 1`` columns, or None: no class cost.
        target_masks: ``(T, H, W)`` binary masks (any dtype; cast to the logits' dtype).
        num_points: uniformly random points shared by all pairs.
        cost_class, cost_mask, cost_dice: weights of the three costs.
        rand: random source (default ``torch.rand`` on the logits' device).
        ignore_masks: optional ``(T, H, W)`` bool; points inside do not count for that target.

    Returns:
        ``(query_idx, target_idx)``, int64 CPU tensors of length ``min(Q, T)``, sorted by query.
    """
    rand = rand if rand is not None else TorchRandom(device=mask_logits.device)
    coords = rand((1, num_points, 2)).to(device=mask_logits.device, dtype=mask_logits.dtype)
    num_queries, num_targets = mask_logits.shape[0], target_masks.shape[0]

    pred_points = point_sample(mask_logits[:, None], coords.expand(num_queries, -1, -1))[:, 0]
    target_coords = coords.expand(num_targets, -1, -1)
    target_points = point_sample(target_masks[:, None].to(mask_logits.dtype), target_coords)[:, 0]
    valid = None if ignore_masks is None else ~ignored_at(ignore_masks[:, None], target_coords)

    cost = cost_mask * pairwise_sigmoid_bce(pred_points, target_points, valid)
    if class_logits is not None and target_labels is not None:
        class_cost = -class_logits.softmax(-1)[:, target_labels.to(class_logits.device)]
        cost = cost + cost_class * class_cost
    cost = cost + cost_dice * pairwise_dice(pred_points, target_points, valid)
    return _linear_sum_assignment(cost)
