"""The seed's CNN task presets: exact shapes, parameter counts, aliases, and use from a TaskSpec."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks import TaskSpec, build_task
from lightning_l2o.tasks.presets import ALIASES, PRESETS, canonical_preset
from tests.conftest import SHARED_DATA, requires_shared_data


def _cnn_parameter_count(in_channels: int, channels: list[int], classes: int = 10) -> int:
    """3x3 kernels plus biases per conv, then a linear layer from the last width to the classes."""
    widths = [in_channels, *channels]
    convs = sum(c_in * c_out * 9 + c_out for c_in, c_out in itertools.pairwise(widths))
    return convs + channels[-1] * classes + classes


@pytest.mark.parametrize(
    "preset, channels",
    [("17", [16, 32, 32]), ("11", [32, 64, 64]), ("19", [8, 16, 16]), ("20", [16, 32, 32]), ("21", [64, 128, 128]),
     ("22", [128, 256, 256]), ("23", [32]), ("24", [32, 64]), ("25", [32, 64, 64, 128]),
     ("26", [32, 64, 64, 128, 128])],
)
def test_numeric_ids_are_the_seed_tasks(preset, channels):
    spec = TaskSpec(preset=preset)
    assert spec.family == "cnn" and spec.batch_size == 128 and spec.arch["channels"] == channels
    assert spec.arch["strides"] == [2] + [1] * (len(channels) - 1)
    assert spec.dataset == ("fashion_mnist" if preset == "17" else "cifar10")


def test_task_17_has_14378_parameters_and_the_reference_layers():
    assert _cnn_parameter_count(1, [16, 32, 32]) == 14378


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_with_its_parameter_count(name, fake_cifar10):
    data_dir = str(fake_cifar10) if name.startswith("cifar10") else str(SHARED_DATA)
    if not name.startswith("cifar10") and not (SHARED_DATA / "MNIST").is_dir():
        pytest.skip(f"real MNIST / FashionMNIST not in {SHARED_DATA}")
    spec = TaskSpec(preset=name, data_dir=data_dir)
    task = build_task(spec)
    in_channels = 3 if spec.dataset == "cifar10" else 1
    assert task.layout.total == _cnn_parameter_count(in_channels, spec.arch["channels"])
    params = task.init_params(task.generator())
    x, y = task.sample_batch(task.generator())
    assert x.shape[0] == 128 and torch.isfinite(task.loss(params, (x[:4], y[:4])))


def test_every_variant_exists_on_all_three_datasets():
    variants = {name.split("-", 1)[1] for name in PRESETS}
    assert variants == {f"width{h}" for h in (8, 16, 32, 64, 128)} | {f"depth{n}" for n in (1, 2, 4, 5)}
    assert all(f"{d}-{v}" in PRESETS for d in ("cifar10", "fashion_mnist", "mnist") for v in variants)
    assert all(canonical_preset(alias) in PRESETS for alias in ALIASES)


@requires_shared_data
def test_a_preset_spec_round_trips_and_names_itself():
    spec = TaskSpec(preset=17, horizon=1000, seed=101, data_dir=str(SHARED_DATA))
    assert spec.name == "fashion_mnist-width16_s101"
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    assert TaskSpec(preset="17", batch_size=32).batch_size == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [({"preset": "99"}, "unknown task preset '99'"), ({"preset": "17", "family": "mlp"}, "drop family"), ({}, "preset")],
)
def test_bad_presets_are_reported(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TaskSpec(**kwargs)
