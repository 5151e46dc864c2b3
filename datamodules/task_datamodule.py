"""TaskDataModule: samples optimizee tasks for meta-training, validation and meta-test."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from datamodules.task_stream import RandomHorizon, SegmentDataset
from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks import Segment, TaskSpec, build_task


class TaskDataModule(pl.LightningDataModule):
    """Training segments from a seeded task stream; fixed held-out tasks for validation and test.

    Training draws tasks from ``train_tasks`` templates with seeds derived from ``(seed, stream, task
    counter)``, never equal to a validation or test seed, and cuts each task's horizon into segments
    of ``unroll_length`` inner steps. Each outer step gets a meta-batch: one segment from each of
    ``meta_batch_size`` independent streams per rank (their meta-gradients are averaged). The stream
    position is part of the datamodule's ``state_dict``, so a resumed ``fit`` continues the stream where
    it stopped.
    Validation and test tasks are the templates crossed with ``val_seeds`` / ``test_seeds``.

    Args:
        train_tasks: task templates to meta-train on (their ``seed`` is ignored).
        val_tasks: templates of validation tasks (baselines' learning rates are tuned on them).
        test_tasks: templates of meta-test tasks; every family must also appear in ``val_tasks``.
        unroll_length: inner steps K per outer step (a truncation of the task's horizon); ``null``: the whole
            horizon in one outer step.
        epoch_length: outer steps per training epoch.
        seed: base seed of the training stream.
        val_seeds: seeds of validation tasks.
        test_seeds: seeds of test tasks.
        random_horizon_after: from this outer step on, each training task's horizon T is drawn uniformly
            from ``[random_horizon_min * T, random_horizon_max * T]`` (``null``: fixed horizons).
        random_horizon_min: lower factor of the random horizon.
        random_horizon_max: upper factor of the random horizon.
        meta_batch_size: optimizees (task streams) per rank and outer step.
    """

    def __init__(
        self,
        train_tasks: list[TaskSpec],
        val_tasks: list[TaskSpec],
        test_tasks: list[TaskSpec],
        unroll_length: int | None = 10,
        epoch_length: int = 100,
        seed: int = 0,
        val_seeds: Sequence[int] = (201, 202, 203),
        test_seeds: Sequence[int] = (101, 102, 103, 104, 105),
        random_horizon_after: int | None = None,
        random_horizon_min: float = 0.75,
        random_horizon_max: float = 2.5,
        meta_batch_size: int = 1,
    ) -> None:
        super().__init__()
        if (unroll_length is not None and unroll_length < 1) or epoch_length < 1 or meta_batch_size < 1:
            raise ConfigError(f"data.unroll_length must be >= 1 or null, data.epoch_length >= 1 and "
                              f"data.meta_batch_size >= 1, got {unroll_length}, {epoch_length}, {meta_batch_size}")
        for key, templates in (("train_tasks", train_tasks), ("val_tasks", val_tasks), ("test_tasks", test_tasks)):
            _check_templates(key, templates)
        if random_horizon_after is not None and (random_horizon_after < 0 or
                                                 not 0 < random_horizon_min <= random_horizon_max):
            raise ConfigError(f"random_horizon_after must be >= 0 and 0 < random_horizon_min <= random_horizon_max; "
                              f"got {random_horizon_after}, {random_horizon_min}, {random_horizon_max}")
        self.random_horizon = (None if random_horizon_after is None else
                               RandomHorizon(random_horizon_after, random_horizon_min, random_horizon_max))
        shared = sorted(set(val_seeds) & set(test_seeds))
        if shared:
            raise ConfigError(f"val_seeds and test_seeds must be disjoint; both contain {shared}")
        missing = {t.family for t in test_tasks} - {t.family for t in val_tasks}
        if missing:
            raise ConfigError(
                f"test_tasks family {sorted(missing)} has no val_tasks entry: baselines' learning rates are tuned "
                f"per family on validation tasks, so add a val_tasks template of that family"
            )
        self.train_tasks, self.val_tasks, self.test_tasks = list(train_tasks), list(val_tasks), list(test_tasks)
        self.unroll_length, self.epoch_length, self.seed = unroll_length, epoch_length, seed
        self.meta_batch_size = meta_batch_size
        self.val_seeds, self.test_seeds = list(val_seeds), list(test_seeds)
        self.next_index = 0

    @property
    def heldout_seeds(self) -> frozenset[int]:
        return frozenset(self.val_seeds) | frozenset(self.test_seeds)

    def val_specs(self) -> list[TaskSpec]:
        return _cross(self.val_tasks, self.val_seeds)

    def test_specs(self) -> list[TaskSpec]:
        return _cross(self.test_tasks, self.test_seeds)

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        dataset = SegmentDataset(self.train_tasks, self.seed, rank, self.heldout_seeds, self.unroll_length,
                                 self.epoch_length, self._stream_position, self.random_horizon, self.meta_batch_size)
        return DataLoader(dataset, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(EveryRank(self.val_specs()), batch_size=None, collate_fn=_identity)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(EveryRank(self.test_specs()), batch_size=None, collate_fn=_identity)

    def _stream_position(self) -> int:
        return self.next_index

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, list) and isinstance(batch[0], Segment) and self.trainer is not None \
                and self.trainer.training:
            self.next_index = batch[0].index + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"next_index": self.next_index, "seed": self.seed, "unroll_length": self.unroll_length,
                "meta_batch_size": self.meta_batch_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.next_index = int(state_dict["next_index"])
        saved = state_dict.get("meta_batch_size", 1)
        if saved != self.meta_batch_size:
            rank_zero_warn(
                f"resuming with data.meta_batch_size={self.meta_batch_size} from a checkpoint written with "
                f"{saved}: rank r's slot s reads stream r * meta_batch_size + s, so the slots now read other "
                f"streams and their optimizees start afresh (the run continues, but not as it would have); "
                f"set data.meta_batch_size: {saved} to continue exactly"
            )


class EveryRank(IterableDataset):
    """Held-out task specs, all of them on every DDP rank: an iterable dataset, which Lightning does not shard, so
    every rank tunes the same baseline learning rates and logs the same metrics (and checkpoint callbacks that
    monitor them decide alike on every rank)."""

    def __init__(self, specs: Sequence[TaskSpec]) -> None:
        self.specs = list(specs)

    def __iter__(self) -> Iterator[TaskSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)


def _identity(x: Any) -> Any:
    return x


def _cross(templates: Sequence[TaskSpec], seeds: Sequence[int]) -> list[TaskSpec]:
    return [t.with_seed(s, index=i) for i, (t, s) in enumerate((t, s) for t in templates for s in seeds)]


def _check_templates(key: str, templates: Sequence[TaskSpec]) -> None:
    if not templates:
        raise ConfigError(f"{key} is empty: give at least one task template")
    for i, template in enumerate(templates):
        try:
            build_task(template)
        except ConfigError as err:
            raise ConfigError(f"data.{key}[{i}]: {err}") from None
