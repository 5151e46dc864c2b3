"""torchvision datasets: real MNIST / FashionMNIST from ../shared/data, CIFAR-10 from files the tests write."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks import TaskSpec, build_task
from lightning_l2o.tasks.datasets import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, load_dataset
from tests.conftest import SHARED_DATA, requires_shared_data, write_fake_cifar10


@requires_shared_data
@pytest.mark.parametrize("name, n_train, n_test", [("fashion_mnist", 60000, 10000), ("mnist", 8000, 2000)])
def test_real_mnist_style_data_loads_normalised(name, n_train, n_test):
    data = load_dataset(name, str(SHARED_DATA))
    assert data.x_train.shape == (n_train, 1, 28, 28) and data.x_test.shape == (n_test, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.num_classes == 10
    assert set(data.y_train.unique().tolist()) == set(range(10))
    assert float(data.x_train.min()) == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)
    assert float(data.x_train.max()) == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, abs=1e-5)


def test_cifar10_reads_the_pickle_layout_channel_first(tmp_path):
    root = write_fake_cifar10(tmp_path, per_batch=4, num_test=6)
    data = load_dataset("cifar10", str(root))
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (6, 3, 32, 32)
    import pickle

    with (root / "cifar-10-batches-py" / "data_batch_1").open("rb") as f:
        raw = pickle.load(f)
    first = torch.tensor(raw["data"][0], dtype=torch.float32).view(3, 32, 32) / 255
    expected = (first - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(data.x_train[0], expected)
    assert data.y_train[:4].tolist() == raw["labels"]


@pytest.mark.parametrize("name, folder", [("fashion_mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_files_name_the_folder_and_the_download_option(tmp_path, name, folder):
    with pytest.raises(ConfigError) as err:
        load_dataset(name, str(tmp_path / "empty"))
    assert str(tmp_path / "empty" / folder) in str(err.value) and "download: true" in str(err.value)


def test_task_spec_data_dir_reaches_the_loader(tmp_path):
    with pytest.raises(ConfigError, match="data_dir"):
        build_task(TaskSpec(preset="17", data_dir=str(tmp_path)))


def test_digits_are_scikit_learns_read_without_importing_it():
    code = ("import sys; from lightning_l2o.tasks.datasets import load_dataset; d = load_dataset('digits'); "
            "print(len(d.y_train) + len(d.y_test), 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1797", "False"]
    from sklearn.datasets import load_digits

    digits, data = load_digits(), load_dataset("digits")
    train = torch.randperm(1797, generator=torch.Generator().manual_seed(0))[:1437]  # the loader's split
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)[train] / 16.0
    torch.testing.assert_close(data.x_train, (x - x.mean()) / x.std())
    assert torch.equal(data.y_train, torch.tensor(digits.target)[train])
