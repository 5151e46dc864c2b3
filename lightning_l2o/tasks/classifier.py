"""MLP and CNN image classifiers trained with cross-entropy on an :mod:`~lightning_l2o.tasks.datasets` dataset."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks.base import Batch, ModuleTask
from lightning_l2o.tasks.datasets import ImageDataset, load_dataset
from lightning_l2o.tasks.spec import TaskSpec

EVAL_TRAIN_EXAMPLES = 2048
EVAL_CHUNK = 1000


class ClassifierTask(ModuleTask):
    """Cross-entropy classification on a dataset's train split; accuracy on its test split."""

    has_accuracy = True

    def __init__(self, spec: TaskSpec, module: nn.Module, data: ImageDataset) -> None:
        super().__init__(spec, module)
        self.data = data

    def sample_batch(self, generator: torch.Generator) -> Batch:
        idx = torch.randint(len(self.data.y_train), (self.spec.batch_size,), generator=generator)
        return self.data.x_train[idx], self.data.y_train[idx]

    def loss(self, params: Tensor, batch: Batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.forward(params, x.to(params.dtype)), y)

    @torch.no_grad()
    def evaluate(self, params: Tensor) -> dict[str, float]:
        """Loss on the first 2048 training examples; loss and accuracy on the whole test split (in chunks)."""
        n = min(EVAL_TRAIN_EXAMPLES, len(self.data.y_train))
        train_loss = self.loss(params, (self.data.x_train[:n], self.data.y_train[:n]))
        logits = torch.cat([self.forward(params, x.to(params.dtype)) for x in self.data.x_test.split(EVAL_CHUNK)])
        return {
            "train_loss": float(train_loss),
            "test_loss": float(F.cross_entropy(logits, self.data.y_test)),
            "test_accuracy": float((logits.argmax(-1) == self.data.y_test).float().mean()),
        }


def _require_dataset(spec: TaskSpec) -> ImageDataset:
    if spec.dataset is None:
        raise ConfigError(f"{spec.family}: a dataset is required (e.g. dataset: digits)")
    return load_dataset(spec.dataset, spec.data_dir, spec.download)


class MLPTask(ClassifierTask):
    """Fully connected ReLU network on flattened images.

    Args (``arch``):
        hidden: widths of the hidden layers, e.g. ``[32]``.
    """

    family = "mlp"

    def __init__(self, spec: TaskSpec, hidden: Sequence[int] = (32,)) -> None:
        data = _require_dataset(spec)
        if any(h < 1 for h in hidden):
            raise ConfigError(f"mlp: arch.hidden widths must be >= 1, got {list(hidden)}")
        widths = [int(torch.tensor(data.input_shape).prod()), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], data.num_classes))
        super().__init__(spec, nn.Sequential(*layers), data)


class ConvNet(nn.Module):
    """3x3 convolutions with ReLU, global average pooling, a linear classifier.

    A convolution with stride 1 pads to keep its size; one with stride > 1 uses no padding
    (the first layer of Kofinas et al.'s CNN: 3x3, stride 2, no padding).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], strides: Sequence[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip([in_channels, *channels[:-1]], channels, strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1 if stride == 1 else 0), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class CNNTask(ClassifierTask):
    """Small convolutional classifier.

    Args (``arch``):
        channels: output channels of each 3x3 convolution, e.g. ``[16, 32, 32]``.
        strides: stride of each convolution (default: all 1).
    """

    family = "cnn"

    def __init__(self, spec: TaskSpec, channels: Sequence[int] = (8, 16), strides: Sequence[int] | None = None) -> None:
        data = _require_dataset(spec)
        strides = list(strides) if strides is not None else [1] * len(channels)
        if not channels or len(strides) != len(channels) or min(channels) < 1 or min(strides) < 1:
            raise ConfigError(
                f"cnn: arch.channels must be a non-empty list of positive widths and arch.strides one positive "
                f"stride per layer; got channels={list(channels)}, strides={strides}"
            )
        net = ConvNet(data.input_shape[0], list(channels), strides, data.num_classes)
        super().__init__(spec, net, data)
