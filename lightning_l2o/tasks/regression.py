"""Linear regression with MSE, as in the Opt2Vec README: ``nn.Linear(10, 1)`` on synthetic data."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks.base import Batch, ModuleTask
from lightning_l2o.tasks.spec import TaskSpec


class RegressionTask(ModuleTask):
    """``y = x . w* + b* + noise`` with ``x ~ N(0, I)``; the optimizee is ``nn.Linear(inputs, 1)``.

    Args (``arch``):
        inputs: input features.
        num_train, num_test: synthetic examples per split.
        noise: standard deviation of the label noise.
    """

    family = "regression"

    def __init__(
        self, spec: TaskSpec, inputs: int = 10, num_train: int = 512, num_test: int = 256, noise: float = 0.1
    ) -> None:
        if inputs < 1 or num_train < 1 or num_test < 1:
            raise ConfigError("regression: arch.inputs, arch.num_train and arch.num_test must be >= 1")
        super().__init__(spec, nn.Linear(inputs, 1))
        gen = self.problem_generator()
        w, b = torch.randn(inputs, generator=gen), torch.randn(1, generator=gen)
        x = torch.randn(num_train + num_test, inputs, generator=gen)
        y = x @ w + b + noise * torch.randn(num_train + num_test, generator=gen)
        self.x_train, self.x_test = x[:num_train], x[num_train:]
        self.y_train, self.y_test = y[:num_train], y[num_train:]

    def sample_batch(self, generator: torch.Generator) -> Batch:
        idx = torch.randint(len(self.y_train), (self.spec.batch_size,), generator=generator)
        return self.x_train[idx], self.y_train[idx]

    def loss(self, params: Tensor, batch: Batch) -> Tensor:
        x, y = batch
        return (self.forward(params, x.to(params.dtype)).squeeze(-1) - y.to(params.dtype)).square().mean()

    @torch.no_grad()
    def evaluate(self, params: Tensor) -> dict[str, float]:
        return {
            "train_loss": float(self.loss(params, (self.x_train, self.y_train))),
            "test_loss": float(self.loss(params, (self.x_test, self.y_test))),
            "test_accuracy": math.nan,
        }
