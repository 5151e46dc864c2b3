"""Random quadratics f(theta) = ||W theta - y||^2 (Andrychowicz et al., 2016)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_l2o.errors import ConfigError
from lightning_l2o.params import ParamLayout
from lightning_l2o.tasks.base import Batch, Task
from lightning_l2o.tasks.spec import TaskSpec


class QuadraticTask(Task):
    """``W ~ N(0, 1)^(dim x dim)`` and ``y ~ N(0, 1)^dim`` fixed per seed; deterministic loss.

    Args (``arch``):
        dim: number of parameters.
    """

    family = "quadratic"

    def __init__(self, spec: TaskSpec, dim: int = 10) -> None:
        super().__init__(spec)
        if dim < 1:
            raise ConfigError(f"quadratic: arch.dim must be >= 1, got {dim}")
        gen = self.problem_generator()
        self.W = torch.randn(dim, dim, generator=gen)
        self.y = torch.randn(dim, generator=gen)
        self._layout = ParamLayout(("theta",), (torch.Size([dim]),))

    @property
    def layout(self) -> ParamLayout:
        return self._layout

    def init_params(self, generator: torch.Generator) -> Tensor:
        return (torch.randn(self._layout.total, generator=generator) / math.sqrt(self._layout.total)).to(self.device)

    def sample_batch(self, generator: torch.Generator) -> Batch:
        return ()

    def loss(self, params: Tensor, batch: Batch) -> Tensor:
        residual = self.W.to(params.dtype) @ params - self.y.to(params.dtype)
        return residual.square().sum()

    @torch.no_grad()
    def evaluate(self, params: Tensor) -> dict[str, float]:
        loss = float(self.loss(params, ()))
        return {"train_loss": loss, "test_loss": loss, "test_accuracy": math.nan}
