"""Classification datasets as in-memory tensors, loaded once per process.

``digits`` (scikit-learn's bundled 8x8 handwritten digits) needs no download and is the default.
``mnist``, ``fashion_mnist`` and ``cifar10`` are read by torchvision from ``data_dir`` (torchvision's
layout: ``<data_dir>/MNIST/raw``, ``<data_dir>/FashionMNIST/raw``, ``<data_dir>/cifar-10-batches-py``);
``download=True`` fetches them there first (needs internet). ``data_dir=None`` means the environment
variable ``L2O_DATA_DIR``, else ``./data``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_l2o.errors import ConfigError

DATA_DIR_ENV = "L2O_DATA_DIR"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # used for FashionMNIST too, as in Kofinas et al.'s code
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ImageDataset:
    """Normalised images ``(N, C, H, W)`` and integer labels ``(N,)`` for a train and a test split."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> ImageDataset:
        """This dataset on ``device``; one copy per device is kept, shared by all tasks."""
        if self.x_train.device == device:
            return self
        key = (id(self), str(device))
        if key not in _DEVICE_COPIES:
            _DEVICE_COPIES[key] = ImageDataset(
                self.x_train.to(device), self.y_train.to(device), self.x_test.to(device), self.y_test.to(device),
                self.num_classes,
            )
        return _DEVICE_COPIES[key]


_DEVICE_COPIES: dict[tuple[int, str], ImageDataset] = {}


def _load_digits(data_dir: Path, download: bool) -> ImageDataset:
    rows = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float32)  # 64 pixels in 0..16, then the label
    x = torch.from_numpy(rows[:, :-1]).view(-1, 1, 8, 8) / 16.0
    y = torch.from_numpy(rows[:, -1]).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(y))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return ImageDataset(x[train], y[train], x[test], y[test], num_classes=10)


def _digits_file() -> Path:
    """scikit-learn's bundled copy of the digits, found without importing scikit-learn (which loads scipy: ~30 MiB
    of the meta-training's memory)."""
    spec = importlib.util.find_spec("sklearn")
    path = None if spec is None else Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if path is None or not path.is_file():
        raise ConfigError("dataset 'digits' is read from scikit-learn's bundled digits.csv.gz, which was not found; "
                          "pip install scikit-learn (see requirements.txt)")
    return path


def _normalised(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 ``(N, C, H, W)`` -> float32 in [0, 1], then per-channel ``(x - mean) / std``."""
    x = images.float().div_(255.0)
    return x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))


def _torchvision_split(cls: type, data_dir: Path, download: bool, train: bool, where: str) -> tuple[Tensor, Tensor]:
    """``(images uint8 (N, C, H, W), labels (N,))`` of one split, with a clear error when the files are missing."""
    try:
        dataset = cls(root=str(data_dir), train=train, download=download)
    except RuntimeError as err:
        hint = "check the download (needs internet)" if download else (
            f"set data_dir to the folder that holds {where}, or download: true to fetch it (needs internet)")
        raise ConfigError(f"{cls.__name__} not found in '{data_dir / where}' ({err}); {hint}") from None
    data = torch.as_tensor(dataset.data)
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    return images, torch.as_tensor(dataset.targets, dtype=torch.long)


def _torchvision_loader(name: str, where: str, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    def load(data_dir: Path, download: bool) -> ImageDataset:
        import torchvision.datasets as tvd

        cls = _unchecked_cifar10() if name == "CIFAR10" else getattr(tvd, name)
        x_train, y_train = _torchvision_split(cls, data_dir, download, True, where)
        x_test, y_test = _torchvision_split(cls, data_dir, download, False, where)
        return ImageDataset(_normalised(x_train, mean, std), y_train, _normalised(x_test, mean, std), y_test, 10)

    return load


def _unchecked_cifar10() -> type:
    import torchvision.datasets as tvd

    class UncheckedCIFAR10(tvd.CIFAR10):
        """CIFAR-10 that requires its pickle files to exist but not to match the official checksums."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            files = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all((folder / name).is_file() for name in files)

        def _load_meta(self) -> None:
            with (Path(self.root) / self.base_folder / self.meta["filename"]).open("rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    UncheckedCIFAR10.__name__ = "CIFAR10"
    return UncheckedCIFAR10


DATASETS: dict[str, Callable[[Path, bool], ImageDataset]] = {
    "digits": _load_digits,
    "mnist": _torchvision_loader("MNIST", "MNIST/raw", (MNIST_MEAN,), (MNIST_STD,)),
    "fashion_mnist": _torchvision_loader("FashionMNIST", "FashionMNIST/raw", (MNIST_MEAN,), (MNIST_STD,)),
    "cifar10": _torchvision_loader("CIFAR10", "cifar-10-batches-py", CIFAR10_MEAN, CIFAR10_STD),
}


def resolve_data_dir(data_dir: str | None) -> Path:
    """``data_dir``, else ``$L2O_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or "data").expanduser()


def load_dataset(name: str, data_dir: str | None = None, download: bool = False) -> ImageDataset:
    """Load (once per process and folder) the dataset called ``name``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}")
    return _load_cached(name, resolve_data_dir(data_dir).resolve(), download)


@cache
def _load_cached(name: str, data_dir: Path, download: bool) -> ImageDataset:
    return DATASETS[name](data_dir, download)
