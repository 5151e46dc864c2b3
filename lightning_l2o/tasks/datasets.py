"""Classification datasets as in-memory tensors, loaded once per process.

``digits`` (scikit-learn's bundled 8x8 handwritten digits) needs no download and is the default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from lightning_l2o.errors import ConfigError


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


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(y))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return ImageDataset(x[train], y[train], x[test], y[test], num_classes=10)


DATASETS: dict[str, Callable[[], ImageDataset]] = {"digits": _load_digits}


@cache
def load_dataset(name: str) -> ImageDataset:
    """Load (once per process) the dataset called ``name``."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]()
