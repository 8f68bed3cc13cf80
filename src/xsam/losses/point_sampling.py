"""Point sampling for the mask losses, and the random sources that drive it.

Coordinates are normalised ``(x, y)`` in ``[0, 1]``: ``(0, 0)`` is the top-left corner of the
top-left pixel and ``(1, 1)`` the bottom-right corner of the bottom-right pixel, whatever the
resolution. Sampling is bilinear ``grid_sample(align_corners=False)``, so one point lands on the same
spot of a 128² prediction and of a 1024² ground-truth mask.

Every random draw of the loss goes through a :data:`RandomSource`, a callable ``shape -> Tensor`` of
uniform ``[0, 1)`` float32 values. The official implementation calls ``torch.rand`` in a fixed order
(see :class:`~xsam.losses.criterion.SegmentationCriterion`); issuing the same calls here lets a run
replay recorded draws (:class:`ReplayRandom`) or regenerate them from a seeded generator
(:class:`TorchRandom`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

RandomSource = Callable[[tuple[int, ...]], Tensor]
"""``rand(shape)`` -> float32 tensor of that shape, uniform in ``[0, 1)`` (any device)."""


class TorchRandom:
    """``torch.rand(shape, generator=generator)`` in float32: the default random source.

    Args:
        generator: optional generator; draws are made on its device. Pass
            ``torch.Generator().manual_seed(seed)`` to reproduce the parity fixtures.
        device: where to draw when no generator is given (default CPU).
    """

    def __init__(
        self, generator: torch.Generator | None = None, *, device: torch.device | str | None = None
    ) -> None:
        self.generator = generator
        self.device = generator.device if generator is not None else torch.device(device or "cpu")

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.device, dtype=torch.float32)


class ReplayRandom:
    """Returns recorded draws in order; raises if a call asks for a different shape or one too many.

    Args:
        draws: the recorded tensors, in call order (e.g. the fixtures' ``loss_rand_call_XX``).
    """

    def __init__(self, draws: Sequence[Tensor]) -> None:
        self._draws = list(draws)
        self._next = 0

    @property
    def remaining(self) -> int:
        """Number of recorded draws not yet returned."""
        return len(self._draws) - self._next

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        if self._next >= len(self._draws):
            raise IndexError(
                f"ReplayRandom exhausted after {len(self._draws)} draws (asked for {tuple(shape)})"
            )
        draw = self._draws[self._next]
        if tuple(draw.shape) != tuple(shape):
            raise ValueError(
                f"ReplayRandom draw #{self._next} has shape {tuple(draw.shape)}, but {tuple(shape)} was asked"
            )
        self._next += 1
        return draw


class RecordingRandom:
    """Wraps a random source and keeps every call's shape (and, optionally, its draw) in order."""

    def __init__(self, source: RandomSource, *, keep_draws: bool = True) -> None:
        self.source = source
        self.keep_draws = keep_draws
        self.shapes: list[tuple[int, ...]] = []
        self.draws: list[Tensor] = []

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        draw = self.source(shape)
        self.shapes.append(tuple(shape))
        if self.keep_draws:
            self.draws.append(draw)
        return draw


def point_sample(inputs: Tensor, coords: Tensor, *, mode: str = "bilinear") -> Tensor:
    """Sample feature maps at normalised points.

    Args:
        inputs: ``(N, C, H, W)`` floating feature maps (cast ``bool``/integer masks first).
        coords: ``(N, P, 2)`` normalised ``(x, y)`` points in ``[0, 1]``.
        mode: ``"bilinear"`` (values) or ``"nearest"`` (label maps such as ignore masks).

    Returns:
        ``(N, C, P)`` sampled values; points outside the map read zeros.
    """
    grid = 2.0 * coords.to(inputs.dtype) - 1.0
    return F.grid_sample(inputs, grid.unsqueeze(2), mode=mode, align_corners=False).squeeze(3)


def ignored_at(ignore_masks: Tensor, coords: Tensor) -> Tensor:
    """Whether each point falls in an ignore region: ``(N, 1, H, W)`` + ``(N, P, 2)`` -> ``(N, P)`` bool.

    A point takes the value of the pixel that contains it (nearest sampling), so it is either fully
    counted or fully ignored.
    """
    return point_sample(ignore_masks.float(), coords.float(), mode="nearest")[:, 0] > 0.5


@torch.no_grad()
def uncertain_points(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_ratio: float,
    rand: RandomSource,
    *,
    ignore_masks: Tensor | None = None,
) -> Tensor:
    """PointRend importance sampling of the points on which a mask loss is computed.

    Draws ``int(num_points * oversample_ratio)`` uniform candidates per mask, keeps the
    ``int(importance_ratio * num_points)`` most uncertain ones (uncertainty ``-|logit|``, i.e. closest
    to the decision boundary) and appends uniform random points up to ``num_points``. Random calls, in
    order: ``rand((N, num_candidates, 2))`` then, if any are needed, ``rand((N, num_random, 2))``.

    Args:
        logits: ``(N, 1, H, W)`` mask logits (the predictions, never the targets).
        num_points: points per mask.
        oversample_ratio: candidates per kept point.
        importance_ratio: fraction of the points chosen by uncertainty.
        rand: random source.
        ignore_masks: optional ``(N, 1, H', W')`` bool; candidates in ignore regions rank last, so
            importance sampling spends its budget on points that count.

    Returns:
        ``(N, num_points, 2)`` normalised ``(x, y)`` points in the dtype of ``logits``: the uncertain
        ones first, then the uniform ones.
    """
    num_masks = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = rand((num_masks, num_candidates, 2)).to(device=logits.device, dtype=logits.dtype)
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()
    if ignore_masks is not None:
        uncertainty = uncertainty.masked_fill(ignored_at(ignore_masks, candidates), float("-inf"))
    chosen = uncertainty.topk(num_uncertain, dim=1).indices
    points = candidates.gather(1, chosen.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        uniform = rand((num_masks, num_random, 2)).to(device=logits.device, dtype=logits.dtype)
        points = torch.cat([points, uniform], dim=1)
    return points
