import warnings

import pytest

from datamodules.task_stream import SegmentDataset, segment_stream, task_stream
from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks import Segment, TaskSpec
from tests.conftest import quadratic, tiny_datamodule


def _ids(loader):
    return [(s.index, s.task.seed, s.start, s.length) for (s,) in loader]


def test_stream_is_reproducible_from_the_seed_and_differs_between_ranks_and_seeds():
    a, b = tiny_datamodule(seed=7), tiny_datamodule(seed=7)
    assert _ids(a.train_dataloader()) == _ids(b.train_dataloader())
    assert _ids(tiny_datamodule(seed=8).train_dataloader()) != _ids(a.train_dataloader())
    templates = [quadratic()]
    rank0 = [t.seed for t, _ in zip(task_stream(templates, seed=7, rank=0), range(20))]
    rank1 = [t.seed for t, _ in zip(task_stream(templates, seed=7, rank=1), range(20))]
    assert not set(rank0) & set(rank1)


def test_a_meta_batch_takes_one_segment_from_each_of_its_own_streams():
    single = [batch for batch in tiny_datamodule().train_dataloader()]
    batches = [batch for batch in tiny_datamodule(meta_batch_size=3).train_dataloader()]
    assert len(batches) == 5 and all(len(batch) == 3 for batch in batches)
    assert [b[0] for b in batches] == [b[0] for b in single]  # slot 0 is the single-stream run
    assert all(len({s.index for s in batch}) == 1 for batch in batches)  # the slots advance together
    assert len({s.task.seed for s in batches[0]}) == 3  # three different optimizees
    # Slot 1 of rank 0 with two slots is stream 1, which a single-slot rank 1 also reads (horizon 20: 2 segments).
    rank1 = [t.seed for t, _ in zip(task_stream([quadratic()], seed=0, rank=1), range(2))]
    slots = SegmentDataset([quadratic()], 0, 0, frozenset(), 10, 3, lambda: 0, meta_batch_size=2)
    assert [batch[1].task.seed for batch in slots] == [rank1[0], rank1[0], rank1[1]]


def test_segments_cut_each_horizon_into_unrolls():
    tasks = iter([quadratic(25).with_seed(1, 0), quadratic(10).with_seed(2, 1)])
    segments = [(s.task.seed, s.start, s.length) for s in segment_stream(tasks, unroll_length=10)]
    assert segments == [(1, 0, 10), (1, 10, 10), (1, 20, 5), (2, 0, 10)]


def test_training_seeds_never_hit_held_out_seeds():
    first = next(task_stream([quadratic()], seed=0)).seed
    assert next(task_stream([quadratic()], seed=0, heldout_seeds=frozenset({first}))).seed != first


def test_stream_continues_after_a_resume_instead_of_restarting():
    datamodule = tiny_datamodule()  # epoch_length 5
    full = _ids(datamodule.train_dataloader())
    # The datamodule records consumed training segments (not prefetched ones).
    datamodule.trainer = type("T", (), {"training": True})()
    datamodule.on_before_batch_transfer([Segment(2, quadratic(), 0, 10)], 0)
    state = datamodule.state_dict()
    resumed = tiny_datamodule()
    resumed.load_state_dict(state)
    assert _ids(resumed.train_dataloader()) == full[3:]
    # The next epoch starts where the previous one ended.
    resumed.load_state_dict({**state, "next_index": 5})
    assert [s[0] for s in _ids(resumed.train_dataloader())] == [5, 6, 7, 8, 9]


def test_resuming_with_another_meta_batch_size_warns_that_the_streams_change():
    state = tiny_datamodule(meta_batch_size=2).state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_datamodule(meta_batch_size=2).load_state_dict(state)  # the same size resumes silently
    with pytest.warns(UserWarning, match=r"data.meta_batch_size=3 .* written with 2.*meta_batch_size: 2"):
        tiny_datamodule(meta_batch_size=3).load_state_dict(state)


def test_held_out_tasks_use_their_own_seeds_and_an_unseen_architecture():
    datamodule = tiny_datamodule()
    assert {s.seed for s in datamodule.val_specs()} == {201}
    assert {s.seed for s in datamodule.test_specs()} == {101, 102}
    train_arch = {t.with_seed(0).architecture for t in datamodule.train_tasks}
    assert {s.architecture for s in datamodule.test_specs()} - train_arch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_tasks": [TaskSpec("quadratik")]}, r"data.train_tasks\[0\]: unknown task family 'quadratik'"),
        ({"val_tasks": []}, "val_tasks is empty"),
        ({"test_seeds": [201]}, "val_seeds and test_seeds must be disjoint"),
        ({"test_tasks": [TaskSpec("regression")]}, "has no val_tasks entry"),
        ({"unroll_length": 0}, "unroll_length"),
        ({"meta_batch_size": 0}, "data.meta_batch_size"),
    ],
)
def test_bad_configuration_is_reported_with_its_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tiny_datamodule(**kwargs)
