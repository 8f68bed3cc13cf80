"""Dataset mixture: square-root repeat factors, single-source steps across ranks, determinism, resume."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from xsam.data.mixture import MixtureDataset, SourceGroupedSampler, repeat_factor

SIZES = {"large": 1000, "medium": 100, "small": 10}


def _mixture() -> MixtureDataset:
    return MixtureDataset({name: [f"{name}-{i}" for i in range(n)] for name, n in SIZES.items()})


def test_repeat_factors_on_hand_computed_sizes():
    mixture = _mixture()
    # f = 1000/1110, 100/1110, 10/1110 -> r = max(1, sqrt(0.1 / f)) = 1, 1.05357, 3.33167
    assert mixture.repeat_factors["large"] == 1.0
    assert mixture.repeat_factors["medium"] == pytest.approx(math.sqrt(1.11), rel=1e-12)
    assert mixture.repeat_factors["small"] == pytest.approx(math.sqrt(11.1), rel=1e-12)
    assert mixture.source_lengths == {"large": 1000, "medium": 105, "small": 33}
    assert len(mixture) == 1138 and mixture.lengths == [1000, 105, 33]
    assert repeat_factor(0, 10, 0.1) == 1.0


def test_weights_multiply_the_square_root_repeat():
    datasets = {name: [f"{name}-{i}" for i in range(n)] for name, n in SIZES.items()}
    mixture = MixtureDataset(datasets, weights={"large": 2.0, "small": 0.5})
    assert mixture.repeat_factors["large"] == 2.0
    assert mixture.repeat_factors["medium"] == pytest.approx(math.sqrt(1.11), rel=1e-12)
    assert mixture.repeat_factors["small"] == pytest.approx(0.5 * math.sqrt(11.1), rel=1e-12)
    assert mixture.source_lengths == {"large": 2000, "medium": 105, "small": 16}
    assert mixture[1999] == "large-999" and mixture[2000] == "medium-0"
    with pytest.raises(ValueError, match=r"unknown source.*huge"):
        MixtureDataset(datasets, weights={"huge": 2.0})
    for weight in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="must be positive and finite"):
            MixtureDataset(datasets, weights={"small": weight})


def test_mixture_indexes_each_source_modulo_its_size():
    mixture = _mixture()
    assert mixture[0] == "large-0" and mixture[999] == "large-999"
    assert mixture[1000] == "medium-0" and mixture[1104] == "medium-4"  # 104 mod 100
    assert mixture[1105] == "small-0" and mixture[1137] == "small-2"  # 32 mod 10
    assert mixture.locate(1115) == ("small", 0)
    counts = Counter(mixture[i].rsplit("-", 1)[0] for i in range(len(mixture)))
    assert counts == {"large": 1000, "medium": 105, "small": 33}
    with pytest.raises(IndexError):
        mixture[len(mixture)]


def _source_of(index: int, lengths: list[int]) -> int:
    bounds = list(itertools.accumulate(lengths))
    return next(i for i, bound in enumerate(bounds) if index < bound)


def _all_ranks(lengths, batch, world, seed, epoch=0, **kwargs):
    return [
        SourceGroupedSampler(lengths, batch, world, rank, seed, epoch, **kwargs).rank_indices()
        for rank in range(world)
    ]


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_step_is_single_source_across_ranks(world_size, seed):
    lengths, batch = _mixture().lengths, 4
    per_rank = _all_ranks(lengths, batch, world_size, seed)
    steps = len(per_rank[0]) // batch
    assert all(len(indices) == steps * batch for indices in per_rank)
    for step in range(steps):
        indices = [i for rank in per_rank for i in rank[step * batch : (step + 1) * batch]]
        assert len(indices) == batch * world_size
        assert len({_source_of(i, lengths) for i in indices}) == 1, f"step {step} mixes sources"
    # sources are interleaved, not run one after another
    order = [_source_of(per_rank[0][k * batch], lengths) for k in range(steps)]
    assert sum(a != b for a, b in itertools.pairwise(order)) > 3


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_partition_each_epoch(world_size):
    lengths, batch = _mixture().lengths, 4
    per_rank = _all_ranks(lengths, batch, world_size, seed=3)
    seen = Counter(i for indices in per_rank for i in indices)
    # every index of every source is visited, and only the fill of each source's last group repeats
    assert set(seen) == set(range(sum(lengths)))
    group = batch * world_size
    for source, length in enumerate(lengths):
        start = sum(lengths[:source])
        extra = sum(seen[i] - 1 for i in range(start, start + length))
        assert extra == -length % group
    # with drop_last (or sizes that are multiples of a group) the ranks see disjoint indices
    dropped = _all_ranks(lengths, batch, world_size, seed=3, drop_last=True)
    flat = [i for indices in dropped for i in indices]
    assert len(flat) == len(set(flat)) == sum(length // group * group for length in lengths)


def test_source_smaller_than_a_group_is_cycled():
    per_rank = _all_ranks([3, 40], 4, 2, seed=0)
    small_steps = [
        [i for rank in per_rank for i in rank[k * 4 : (k + 1) * 4]]
        for k in range(len(per_rank[0]) // 4)
        if per_rank[0][k * 4] < 3
    ]
    assert len(small_steps) == 1 and sorted(Counter(small_steps[0]).values()) == [2, 3, 3]


def test_order_is_deterministic_per_seed_and_epoch():
    lengths = _mixture().lengths
    first = SourceGroupedSampler(lengths, 4, 2, 1, seed=5, epoch=2)
    again = SourceGroupedSampler(lengths, 4, 2, 1, seed=5, epoch=0)
    again.set_epoch(2)
    assert list(first) == list(again)
    other_epoch = SourceGroupedSampler(lengths, 4, 2, 1, seed=5, epoch=3)
    other_seed = SourceGroupedSampler(lengths, 4, 2, 1, seed=6, epoch=2)
    assert list(other_epoch) != list(first) and list(other_seed) != list(first)
    assert len(first) == len(list(first))


def test_resume_from_state_dict_continues_the_same_order():
    lengths = _mixture().lengths
    sampler = SourceGroupedSampler(lengths, 4, 2, 0, seed=11, epoch=1)
    full = sampler.rank_indices()
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(37)]
    state = sampler.state_dict()
    assert state["position"] == 37 and state["epoch"] == 1
    resumed = SourceGroupedSampler(lengths, 4, 2, 0, seed=11)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the training loop re-announcing the epoch keeps the position
    assert head + list(resumed) == full
    # a DataLoader reads ahead: store what training consumed instead
    consumed = SourceGroupedSampler(lengths, 4, 2, 0, seed=11)
    consumed.load_state_dict(sampler.state_dict(consumed=8))
    assert list(consumed) == full[8:]
    # after a full pass the next iteration (or a new epoch) starts from the beginning
    assert list(consumed) == full
    consumed.set_epoch(2)
    assert consumed.position == 0


def test_load_state_dict_rejects_another_layout():
    sampler = SourceGroupedSampler([10, 20], 2, 2, 0, seed=1)
    with pytest.raises(ValueError, match="world_size"):
        SourceGroupedSampler([10, 20], 2, 4, 0, seed=1).load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="source_lengths"):
        SourceGroupedSampler([10, 21], 2, 2, 0, seed=1).load_state_dict(sampler.state_dict())


@pytest.mark.parametrize(
    "damage",
    [{"position": None}, {"epoch": "1"}, {"position": True}, {"position": 99}, {"epoch": -1}],
    ids=["no-position", "text-epoch", "bool-position", "position-past-the-end", "negative-epoch"],
)
def test_load_state_dict_rejects_a_damaged_state(damage):
    """A damaged checkpoint must not resume somewhere arbitrary (or fail with a bare KeyError)."""
    sampler = SourceGroupedSampler([10, 20], 2, 1, 0, seed=1)
    state = {**sampler.state_dict(), **damage}
    state = {key: value for key, value in state.items() if value is not None}
    with pytest.raises(ValueError, match="sampler"):
        SourceGroupedSampler([10, 20], 2, 1, 0, seed=1).load_state_dict(state)
