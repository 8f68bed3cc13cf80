"""X-SAM's segmentation loss: Mask2Former's criterion over the final and every auxiliary prediction.

For each prediction (the final one first, then auxiliary stages ``0 .. P-2``) the queries of every
decoder sample are matched to its ground truth (:func:`~xsam.losses.matcher.hungarian_match`), then

* ``loss_cls``: cross-entropy over all queries, unmatched ones targeting the last (background /
  no-object) column; class weights 1, except ``no_object_weight`` for that column; PyTorch's weighted
  mean, i.e. divided by the summed weights of the targets, as the official ``nn.CrossEntropyLoss``.
* ``loss_mask``: sigmoid BCE, mean over importance-sampled points, summed over matched masks.
* ``loss_dice``: dice with +1 smoothing on the same points, summed over matched masks.

Both mask losses are divided by ``num_masks`` (the batch's ground-truth masks, at least 1). Every
term comes back already multiplied by its weight (2 / 5 / 5), plus ``loss_seg``, their sum.

Random calls, in the official order (which :class:`~xsam.losses.point_sampling.ReplayRandom` and a
seeded :class:`~xsam.losses.point_sampling.TorchRandom` rely on): for each prediction, one
``(1, num_points, 2)`` draw per decoder sample (matching, in sample order), then
``(M, int(num_points * oversample_ratio), 2)`` candidates and ``(M, num_points -
int(importance_ratio * num_points), 2)`` uniform points for the ``M`` matched masks of the whole batch,
ordered by sample, then by query index.

Ignore regions (an extension; the official loss has none: its 1024² masks are padded with
``ignore_index = 0``, i.e. padding is plain background): a target may carry ``ignore_masks``; points
inside them count neither in matching nor in the mask losses, and importance sampling never prefers
them. Class loss is unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..processing import SegmentationTarget
from .matcher import hungarian_match
from .point_sampling import RandomSource, TorchRandom, ignored_at, point_sample, uncertain_points

Match = tuple[Tensor, Tensor]
"""``(query_idx, target_idx)`` int64 tensors of one decoder sample, sorted by query."""


TargetLike = SegmentationTarget | tuple[Tensor | None, ...]


@dataclass
class CriterionOutput:
    """Everything one criterion call computed.

    Attributes:
        losses: weighted loss terms (see the module docstring) plus ``loss_seg``.
        matches: ``matches[i][n]`` is the :data:`Match` of decoder sample ``n`` for the ``i``-th
            prediction in loss order (final first, then auxiliary stage ``i - 1``).
    """

    losses: dict[str, Tensor]
    matches: list[list[Match]]


def count_target_masks(targets: Sequence[TargetLike]) -> int:
    """Ground-truth masks in a batch: what a distributed trainer all-reduces to get ``num_masks``."""
    return sum(int(target[1].shape[0]) for target in targets)


class SegmentationCriterion(nn.Module):
    """Mask2Former's Hungarian-matched loss as X-SAM configures it (defaults = the released recipe).

    Args:
        num_points: points per mask for matching and for the mask losses.
        oversample_ratio: importance-sampling candidates per point.
        importance_ratio: fraction of points chosen by uncertainty (the rest uniform).
        class_weight, mask_weight, dice_weight: loss weights, also the matching cost weights.
        no_object_weight: class weight of the last (background) column.
    """

    def __init__(
        self,
        *,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_ratio: float = 0.75,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_ratio = importance_ratio
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight

    def forward(
        self,
        class_logits: Tensor | None,
        mask_logits: Tensor,
        targets: Sequence[TargetLike],
        *,
        rand: RandomSource | None = None,
        num_masks: float | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Weighted loss terms; see :meth:`compute` for the arguments."""
        return self.compute(class_logits, mask_logits, targets, rand=rand, num_masks=num_masks).losses

    def compute(
        self,
        class_logits: Tensor | None,
        mask_logits: Tensor,
        targets: Sequence[TargetLike],
        *,
        rand: RandomSource | None = None,
        num_masks: float | Tensor | None = None,
    ) -> CriterionOutput:
        """Match and compute the loss for every prediction.

        Args:
            class_logits: ``(P, N, Q, C + 1)`` class logits of the ``P`` predictions in stage order
                (index ``P - 1`` is the final one), last column background; padded columns at
                ``-1e9`` are fine. None skips classification (no ``loss_cls`` terms).
            mask_logits: ``(P, N, Q, h, w)`` mask logits (128² in X-SAM).
            targets: ``N`` :class:`SegmentationTarget` (or ``(labels, masks[, ignore_masks])`` tuples),
                one per decoder sample.
            rand: random source, default ``torch.rand`` on the logits' device.
            num_masks: normaliser of the mask losses; default the batch's target count. A distributed
                trainer passes the all-reduced count divided by the world size. Clamped to >= 1.

        Returns:
            Keys ``loss_mask``, ``loss_dice``, ``loss_cls`` (final prediction), then the same with
            suffix ``_k`` for auxiliary stage ``k = 0 .. P-2``, then ``loss_seg``; and the matches.
        """
        batch = [_as_target(target) for target in targets]
        _check_inputs(class_logits, mask_logits, batch)
        rand = rand if rand is not None else TorchRandom(device=mask_logits.device)
        if num_masks is None:
            num_masks = count_target_masks(batch)
        normaliser = torch.as_tensor(num_masks, dtype=torch.float32, device=mask_logits.device).clamp(min=1)

        losses: dict[str, Tensor] = {}
        matches: list[list[Match]] = []
        num_predictions = mask_logits.shape[0]
        for stage in [num_predictions - 1, *range(num_predictions - 1)]:
            suffix = "" if stage == num_predictions - 1 else f"_{stage}"
            stage_classes = None if class_logits is None else class_logits[stage]
            stage_matches = self.match(stage_classes, mask_logits[stage], batch, rand=rand)
            loss_mask, loss_dice = self.mask_losses(
                mask_logits[stage], batch, stage_matches, normaliser, rand
            )
            losses[f"loss_mask{suffix}"] = self.mask_weight * loss_mask
            losses[f"loss_dice{suffix}"] = self.dice_weight * loss_dice
            if stage_classes is not None:
                class_loss = self.class_loss(stage_classes, batch, stage_matches, num_masks=normaliser)
                losses[f"loss_cls{suffix}"] = self.class_weight * class_loss
            matches.append(stage_matches)
        losses["loss_seg"] = _sum_in_order(list(losses.values()))
        return CriterionOutput(losses=losses, matches=matches)

    def match(
        self,
        class_logits: Tensor | None,
        mask_logits: Tensor,
        targets: Sequence[SegmentationTarget],
        *,
        rand: RandomSource,
    ) -> list[Match]:
        """Hungarian matches of one prediction: ``(N, Q, C + 1)`` / ``(N, Q, h, w)`` -> N matches."""
        return [
            hungarian_match(
                None if class_logits is None else class_logits[index],
                mask_logits[index],
                target.labels,
                target.masks,
                num_points=self.num_points,
                cost_class=self.class_weight,
                cost_mask=self.mask_weight,
                cost_dice=self.dice_weight,
                rand=rand,
                ignore_masks=target.ignore_masks,
            )
            for index, target in enumerate(targets)
        ]

    def mask_losses(
        self,
        mask_logits: Tensor,
        targets: Sequence[SegmentationTarget],
        matches: Sequence[Match],
        num_masks: Tensor,
        rand: RandomSource,
    ) -> tuple[Tensor, Tensor]:
        """Unweighted ``(bce, dice)`` of one prediction's ``(N, Q, h, w)`` logits on matched pairs."""
        device = mask_logits.device
        predictions = torch.cat(
            [mask_logits[index, query_idx.to(device)] for index, (query_idx, _) in enumerate(matches)]
        )[:, None]
        target_masks, ignore_masks = _matched_targets(targets, matches, predictions)

        with torch.no_grad():
            points = uncertain_points(
                predictions,
                self.num_points,
                self.oversample_ratio,
                self.importance_ratio,
                rand,
                ignore_masks=ignore_masks,
            )
            labels = point_sample(target_masks, points)[:, 0]
            valid = None if ignore_masks is None else ~ignored_at(ignore_masks, points)
        point_logits = point_sample(predictions, points)[:, 0]
        bce = _sigmoid_bce_per_mask(point_logits, labels, valid).sum() / num_masks
        dice = _dice_per_mask(point_logits, labels, valid).sum() / num_masks
        return bce, dice

    def class_loss(
        self,
        class_logits: Tensor,
        targets: Sequence[TargetLike],
        matches: Sequence[Match],
        *,
        num_masks: float | Tensor = 1.0,
    ) -> Tensor:
        """Unweighted classification loss of one prediction's ``(N, Q, C + 1)`` logits.

        With labels: weighted cross-entropy as in the module docstring (``num_masks`` unused).
        Without labels (every target's ``labels`` None, and exactly one logit column): the official
        label-free branch, a sigmoid BCE where matched queries are positives re-weighted by
        ``#negatives / #positives``, mean over queries, summed over samples, divided by ``num_masks``.
        """
        batch = [_as_target(target) for target in targets]
        if all(target.labels is None for target in batch):
            return self._label_free_class_loss(class_logits, matches, num_masks)
        if any(target.labels is None for target in batch):
            raise ValueError("either every target has labels or none has")
        num_samples, num_queries, num_columns = class_logits.shape
        device = class_logits.device
        target_classes = torch.full(
            (num_samples, num_queries), num_columns - 1, dtype=torch.int64, device=device
        )
        for index, (target, (query_idx, target_idx)) in enumerate(zip(batch, matches, strict=True)):
            target_classes[index, query_idx.to(device)] = target.labels.to(device)[target_idx.to(device)]
        weight = torch.ones(num_columns, dtype=class_logits.dtype, device=device)
        weight[-1] = self.no_object_weight
        return F.cross_entropy(class_logits.transpose(1, 2), target_classes, weight=weight)

    @staticmethod
    def _label_free_class_loss(
        class_logits: Tensor, matches: Sequence[Match], num_masks: float | Tensor
    ) -> Tensor:
        if class_logits.shape[-1] != 1:
            raise ValueError(f"label-free targets need one class column, got {class_logits.shape[-1]}")
        positives = torch.zeros_like(class_logits)
        for index, (query_idx, _) in enumerate(matches):
            positives[index, query_idx.to(class_logits.device), 0] = 1
        num_positive = positives.sum()
        pos_weight = (
            (positives.numel() - num_positive) / num_positive if num_positive > 0 else positives.new_ones(())
        )
        bce = F.binary_cross_entropy_with_logits(
            class_logits, positives, reduction="none", pos_weight=pos_weight
        )
        return bce.mean(1).sum() / num_masks


def _as_target(target: TargetLike) -> SegmentationTarget:
    return target if isinstance(target, SegmentationTarget) else SegmentationTarget(*target)


def _check_inputs(
    class_logits: Tensor | None, mask_logits: Tensor, targets: Sequence[SegmentationTarget]
) -> None:
    if mask_logits.ndim != 5 or mask_logits.shape[0] == 0:
        raise ValueError(f"mask_logits must be (P >= 1, N, Q, h, w), got {tuple(mask_logits.shape)}")
    if class_logits is not None and (
        class_logits.ndim != 4 or class_logits.shape[:3] != mask_logits.shape[:3]
    ):
        raise ValueError(
            f"class_logits {tuple(class_logits.shape)} does not match mask_logits {tuple(mask_logits.shape)}"
        )
    if len(targets) != mask_logits.shape[1]:
        raise ValueError(f"{len(targets)} targets for {mask_logits.shape[1]} decoder samples")
    sizes = {tuple(target.masks.shape[-2:]) for target in targets}
    if len(sizes) > 1:
        raise ValueError(f"every sample's masks must share one size (padded input), got {sorted(sizes)}")
    for target in targets:
        if target.masks.ndim != 3:
            raise ValueError(f"target masks must be (T, H, W), got {tuple(target.masks.shape)}")
        if target.labels is not None and target.labels.shape != target.masks.shape[:1]:
            raise ValueError(f"{tuple(target.labels.shape)} labels for {target.masks.shape[0]} masks")
        if target.ignore_masks is not None and target.ignore_masks.shape != target.masks.shape:
            raise ValueError("ignore_masks must have the shape of masks")


def _matched_targets(
    targets: Sequence[SegmentationTarget], matches: Sequence[Match], predictions: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Matched ``(M, 1, H, W)`` target masks in the predictions' dtype, and ignore masks (or None)."""
    pairs = list(zip(targets, matches, strict=True))
    masks = torch.cat(
        [_select(target.masks, target_idx, predictions.device) for target, (_, target_idx) in pairs]
    )
    masks = masks.to(predictions.dtype)[:, None]
    if all(target.ignore_masks is None for target in targets):
        return masks, None
    ignore = torch.cat(
        [
            _select(_ignore_or_nothing(target), target_idx, predictions.device)
            for target, (_, target_idx) in pairs
        ]
    )
    return masks, ignore[:, None]


def _select(masks: Tensor, index: Tensor, device: torch.device) -> Tensor:
    """``masks[index]`` moved to ``device`` (index first: only the matched 1024² masks travel)."""
    return masks[index.to(masks.device)].to(device)


def _ignore_or_nothing(target: SegmentationTarget) -> Tensor:
    if target.ignore_masks is not None:
        return target.ignore_masks.to(torch.bool)
    return torch.zeros(target.masks.shape, dtype=torch.bool, device=target.masks.device)


def _sigmoid_bce_per_mask(logits: Tensor, labels: Tensor, valid: Tensor | None) -> Tensor:
    """``(M, P)`` logits / labels -> ``(M,)`` BCE, averaged over the (valid) points."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if valid is None:
        return loss.mean(1)
    weights = valid.to(loss.dtype)
    return (loss * weights).sum(1) / weights.sum(1).clamp(min=1)


def _dice_per_mask(logits: Tensor, labels: Tensor, valid: Tensor | None) -> Tensor:
    """``(M, P)`` logits / labels -> ``(M,)`` dice loss ``1 - (2|x∩y| + 1) / (|x| + |y| + 1)``."""
    probs = logits.sigmoid()
    if valid is not None:
        weights = valid.to(probs.dtype)
        probs, labels = probs * weights, labels * weights
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def _sum_in_order(values: list[Tensor]) -> Tensor:
    """Left-to-right sum, the order of the official ``sum(loss_dict.values())`` (float addition)."""
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total
