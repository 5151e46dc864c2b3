"""Reproducible streams of task specs and of the unroll segments that meta-training consumes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from torch.utils.data import IterableDataset

from lightning_l2o.tasks import Segment, TaskSpec

MAX_SEED = 2**31 - 1


def task_stream(
    templates: Sequence[TaskSpec], seed: int, rank: int = 0, heldout_seeds: frozenset[int] = frozenset()
) -> Iterator[TaskSpec]:
    """Endless training tasks: task ``c`` of ``rank`` is drawn from ``(seed, rank, c)`` alone.

    Each task picks a template uniformly and a fresh seed that is never one of ``heldout_seeds``.
    """
    for counter in itertools.count():
        rng = np.random.default_rng([seed, rank, counter])
        template = templates[int(rng.integers(len(templates)))]
        task_seed = int(rng.integers(MAX_SEED))
        while task_seed in heldout_seeds:
            task_seed = int(rng.integers(MAX_SEED))
        yield template.with_seed(task_seed, index=counter)


@dataclass(frozen=True)
class RandomHorizon:
    """From outer step ``after`` on, each new task's horizon T is drawn uniformly from ``[low T, high T]``.

    The draw depends only on the task's seed and stream index, so a resumed stream draws the same horizons.
    """

    after: int
    low: float = 0.75
    high: float = 2.5

    def bounds(self, horizon: int) -> tuple[int, int]:
        """Smallest and largest horizon drawn for a template horizon ``horizon`` (both inclusive)."""
        lo = max(1, math.ceil(self.low * horizon))
        return lo, max(lo, math.floor(self.high * horizon))

    def apply(self, spec: TaskSpec, segment_index: int) -> TaskSpec:
        """``spec`` with a random horizon if its first segment is at or after ``after``."""
        if segment_index < self.after:
            return spec
        lo, hi = self.bounds(spec.horizon)
        rng = np.random.default_rng([spec.seed, spec.index, 1])
        return replace(spec, horizon=int(rng.integers(lo, hi + 1)))


def segment_stream(
    tasks: Iterator[TaskSpec], unroll_length: int | None, random_horizon: RandomHorizon | None = None
) -> Iterator[Segment]:
    """Cut each task's horizon into segments of ``unroll_length`` inner steps (the last may be shorter);
    ``None``: one segment per task. ``random_horizon`` redraws horizons once training is far enough."""
    index = 0
    for spec in tasks:
        if random_horizon is not None:
            spec = random_horizon.apply(spec, index)
        length = unroll_length or spec.horizon
        for start in range(0, spec.horizon, length):
            yield Segment(index, spec, start, min(length, spec.horizon - start))
            index += 1


class SegmentDataset(IterableDataset):
    """One training epoch of meta-batches, starting at the stream position ``position()`` read at each ``iter``.

    A meta-batch is a list of ``meta_batch_size`` segments, one from each of as many independent task streams
    (stream ``rank * meta_batch_size + slot``, so one slot per rank reproduces the single-stream run), taken at
    the same position. Epoch ``e`` is positions ``[e * length, (e + 1) * length)``; iterating from a position
    inside an epoch (after a resume) yields the rest of that epoch.
    """

    def __init__(
        self, templates: Sequence[TaskSpec], seed: int, rank: int, heldout_seeds: frozenset[int],
        unroll_length: int | None, epoch_length: int, position: Callable[[], int],
        random_horizon: RandomHorizon | None = None, meta_batch_size: int = 1,
    ) -> None:
        self.templates, self.seed, self.rank, self.heldout_seeds = templates, seed, rank, heldout_seeds
        self.unroll_length, self.epoch_length, self.position = unroll_length, epoch_length, position
        self.random_horizon, self.meta_batch_size = random_horizon, meta_batch_size

    def __len__(self) -> int:
        return self.epoch_length

    def __iter__(self) -> Iterator[list[Segment]]:
        start = self.position()
        end = (start // self.epoch_length + 1) * self.epoch_length
        streams = [
            segment_stream(task_stream(self.templates, self.seed, self.rank * self.meta_batch_size + slot,
                                       self.heldout_seeds), self.unroll_length, self.random_horizon)
            for slot in range(self.meta_batch_size)
        ]
        return itertools.islice(map(list, zip(*streams)), start, end)
