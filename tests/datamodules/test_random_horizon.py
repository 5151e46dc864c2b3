"""Randomized inner-step counts: fixed before the switch, uniform in [min T, max T] after it, reproducible."""

from __future__ import annotations

import itertools

import pytest

from datamodules.task_stream import RandomHorizon, segment_stream, task_stream
from lightning_l2o.errors import ConfigError
from tests.conftest import quadratic, tiny_datamodule


def _task_lengths(random_horizon: RandomHorizon, count: int, seed: int = 0) -> list[int]:
    segments = segment_stream(task_stream([quadratic(horizon=100)], seed), None, random_horizon)
    return [s.length for s in itertools.islice(segments, count)]


def test_horizons_are_fixed_before_the_switch_and_within_range_after():
    lengths = _task_lengths(RandomHorizon(after=10, low=0.75, high=2.5), 400)
    assert lengths[:10] == [100] * 10
    after = lengths[10:]
    assert min(after) >= 75 and max(after) <= 250
    assert min(after) < 85 and max(after) > 240, "draws should cover the whole range"
    assert len(set(after)) > 100


def test_random_horizons_are_reproducible_and_segmented():
    assert _task_lengths(RandomHorizon(0), 50) == _task_lengths(RandomHorizon(0), 50)
    assert _task_lengths(RandomHorizon(0), 50) != _task_lengths(RandomHorizon(0), 50, seed=1)
    segments = list(itertools.islice(segment_stream(task_stream([quadratic(horizon=100)], 0), 40,
                                                    RandomHorizon(0)), 30))
    for task_index, group in itertools.groupby(segments, key=lambda s: s.task.index):
        group = list(group)
        assert [s.start for s in group] == list(range(0, group[0].task.horizon, 40))
        assert sum(s.length for s in group) == group[0].task.horizon


def test_bounds_round_inwards_and_never_reach_zero():
    assert RandomHorizon(0, 0.75, 2.5).bounds(10) == (8, 25)
    assert RandomHorizon(0, 0.01, 0.02).bounds(10) == (1, 1)


def test_datamodule_passes_the_random_horizon_to_its_stream():
    dm = tiny_datamodule(unroll_length=None, random_horizon_after=0, random_horizon_min=0.5, random_horizon_max=1.5)
    lengths = [s.length for (s,) in itertools.islice(iter(dm.train_dataloader().dataset), 5)]
    assert all(12 <= n <= 37 for n in lengths) and len(set(lengths)) > 1


@pytest.mark.parametrize("kwargs", [{"random_horizon_after": -1}, {"random_horizon_after": 5, "random_horizon_min": 3.0}])
def test_bad_random_horizon_settings_are_named(kwargs):
    with pytest.raises(ConfigError, match="random_horizon"):
        tiny_datamodule(**kwargs)
