"""The stage-3 dataset mixture: square-root oversampling and single-source optimisation steps.

As the release trains stage 3: :class:`MixtureDataset` concatenates named datasets, repeating the small ones;
:class:`SourceGroupedSampler` orders the concatenated indices so that every optimisation step, across
all ranks, draws from one source (hence one task: the model runs one task layout per forward).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

_ItemT = TypeVar("_ItemT")


def repeat_factor(size: int, total: int, ratio: float) -> float:
    """``max(1, sqrt(ratio / f))`` with ``f = size / total``: how often a source is repeated."""
    if size <= 0:
        return 1.0
    return max(1.0, math.sqrt(ratio / (size / total)))


def is_valid_weight(weight: float) -> bool:
    """Whether ``weight`` can scale a source's repeat: finite and positive."""
    return math.isfinite(weight) and weight > 0


class MixtureDataset(Generic[_ItemT]):
    """Named datasets concatenated in mapping order, each repeated ``r = w * max(1, sqrt(ratio / f))``.

    ``f`` is the source's share of all samples and ``w`` its weight (1 unless given); the repeat is
    fractional: a source of ``N`` samples occupies ``int(N * r)`` consecutive indices and index ``k``
    of that block reads sample ``k mod N``. E.g. sizes 1000 / 100 / 10 with ratio 0.1 give lengths
    1000 / 105 / 33; a weight of 2 on the first makes it 2000.

    Args:
        datasets: source name -> any sequence (``len`` and integer indexing).
        ratio: the official ``oversample_ratio`` (0.1).
        weights: source name -> a positive factor on its repeat (how much more often than the
            square-root rule its samples are drawn); sources not named keep 1.
    """

    def __init__(
        self,
        datasets: Mapping[str, Sequence[_ItemT]],
        *,
        ratio: float = 0.1,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if not datasets:
            raise ValueError("MixtureDataset needs at least one dataset")
        if ratio <= 0:
            raise ValueError(f"ratio must be positive, got {ratio}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(datasets))
        if unknown:
            raise ValueError(f"weights name unknown source(s) {', '.join(unknown)}")
        bad = {name: weight for name, weight in weights.items() if not is_valid_weight(weight)}
        if bad:
            raise ValueError(f"source weights must be positive and finite, got {bad}")
        self.datasets = dict(datasets)
        sizes = {name: len(dataset) for name, dataset in self.datasets.items()}
        total = sum(sizes.values())
        if total == 0:
            raise ValueError("every dataset of the mixture is empty")
        self.repeat_factors = {
            name: weights.get(name, 1.0) * repeat_factor(size, total, ratio) for name, size in sizes.items()
        }
        self.source_lengths = {name: int(sizes[name] * self.repeat_factors[name]) for name in sizes}
        self.offsets, start = {}, 0
        for name, length in self.source_lengths.items():
            self.offsets[name] = start
            start += length

    @property
    def sources(self) -> list[str]:
        return list(self.datasets)

    @property
    def lengths(self) -> list[int]:
        """Effective length of each source, in source order (what :class:`SourceGroupedSampler` takes)."""
        return list(self.source_lengths.values())

    def __len__(self) -> int:
        return sum(self.source_lengths.values())

    def locate(self, index: int) -> tuple[str, int]:
        """``(source name, index into that source's dataset)`` of a mixture index."""
        if not 0 <= index < len(self):
            raise IndexError(f"mixture index {index} out of range 0..{len(self) - 1}")
        for name, offset in reversed(self.offsets.items()):
            if index >= offset:
                return name, (index - offset) % len(self.datasets[name])
        raise AssertionError("unreachable")  # offsets start at 0

    def __getitem__(self, index: int) -> _ItemT:
        name, local = self.locate(index)
        return self.datasets[name][local]


class SourceGroupedSampler:
    """Distributed sampler whose every optimisation step is drawn from one source.

    For epoch ``e`` (seeded by ``(seed, e)``, identical on all ranks): each source's indices (offset
    into the concatenation) are shuffled and cut into groups of ``batch_size_per_device * world_size``
    consecutive indices; the groups of all sources are shuffled together; rank ``r`` takes
    ``group[r::world_size]`` of each group in turn. So the ``k``-th batch of every rank comes from group
    ``k``, and one optimisation step (all ranks together) covers exactly one group.

    Leftovers: the official sampler rounds a source's last, incomplete group up with indices of the
    neighbouring source, which makes that step mixed-source. Here the last group is instead completed
    with indices re-drawn from the *same* source (the start of its shuffled order, cyclically when the
    source is smaller than a group), so every step stays single-source at the cost of seeing up to
    ``group - 1`` samples of a source twice per epoch. ``drop_last=True`` drops incomplete groups.

    Resuming: :meth:`state_dict` holds ``epoch`` and ``position`` (indices already yielded on this rank
    in the epoch); after :meth:`load_state_dict` iteration continues from there. A ``DataLoader`` reads
    the sampler ahead of training, so store the position the training loop actually consumed:
    ``state_dict(consumed=steps_done_this_epoch * batch_size_per_device)``.
    """

    def __init__(
        self,
        source_lengths: Sequence[int] | Mapping[str, int],
        batch_size_per_device: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        epoch: int = 0,
        *,
        drop_last: bool = False,
    ) -> None:
        lengths = (
            list(source_lengths.values()) if isinstance(source_lengths, Mapping) else list(source_lengths)
        )
        if any(length < 0 for length in lengths):
            raise ValueError(f"source lengths must be >= 0, got {lengths}")
        if batch_size_per_device < 1 or world_size < 1:
            raise ValueError("batch_size_per_device and world_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.source_lengths = lengths
        self.batch_size_per_device = batch_size_per_device
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = epoch
        self.drop_last = drop_last
        self.position = 0

    @property
    def group_size(self) -> int:
        """Indices per optimisation step over all ranks."""
        return self.batch_size_per_device * self.world_size

    def _num_groups(self, length: int) -> int:
        return length // self.group_size if self.drop_last else math.ceil(length / self.group_size)

    def __len__(self) -> int:
        """Indices this rank yields per epoch (a multiple of ``batch_size_per_device``)."""
        groups = sum(self._num_groups(length) for length in self.source_lengths)
        return groups * self.batch_size_per_device

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a new epoch starts at its beginning, the same one keeps a resumed position."""
        if epoch != self.epoch:
            self.position = 0
        self.epoch = epoch

    def groups(self) -> np.ndarray:
        """This epoch's ``(num_groups, group_size)`` global index groups, in step order (all ranks)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        groups, offset = [], 0
        for length in self.source_lengths:
            count = self._num_groups(length)
            if count:
                order = offset + rng.permutation(length)
                # np.resize repeats the order cyclically: the "re-draw from the same source" fill.
                groups.append(np.resize(order, count * self.group_size).reshape(count, self.group_size))
            offset += length
        if not groups:
            return np.zeros((0, self.group_size), dtype=np.int64)
        stacked = np.concatenate(groups)
        return stacked[rng.permutation(len(stacked))]

    def rank_indices(self) -> list[int]:
        """Every index this rank yields in the current epoch, in order."""
        return self.groups()[:, self.rank :: self.world_size].reshape(-1).tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self.rank_indices()
        while self.position < len(indices):
            index = indices[self.position]
            self.position += 1
            yield index
        self.position = 0  # the epoch is complete; a new iteration starts it again

    def state_dict(self, *, consumed: int | None = None) -> dict[str, Any]:
        """Resumable state; ``consumed`` overrides the position with what training really used."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position if consumed is None else int(consumed),
            "world_size": self.world_size,
            "batch_size_per_device": self.batch_size_per_device,
            "source_lengths": list(self.source_lengths),
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a run; the index layout (seed, sizes, world size, batch size) must match.

        Raises:
            ValueError: the state lacks ``epoch`` or ``position`` or holds non-integers there (a damaged
                checkpoint), its layout differs from this sampler's, or the position is out of range.
        """
        for key in ("seed", "world_size", "batch_size_per_device", "source_lengths", "drop_last"):
            mine = getattr(self, key)
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]!r}, this sampler {mine!r}")
        epoch, position = (state.get(key) for key in ("epoch", "position"))
        # bool is an int subclass, but never a valid epoch or position
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in (epoch, position)):
            raise ValueError(f"sampler state needs integer epoch, position, got {epoch!r}, {position!r}")
        if not 0 <= position <= len(self):
            raise ValueError(f"sampler position {position} outside 0..{len(self)}")
        if epoch < 0:
            raise ValueError(f"sampler epoch {epoch} is negative")
        self.epoch = epoch
        self.position = position
