"""The optimizee interface: a differentiable loss of one flat parameter vector."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_l2o.params import ParamLayout, ParamSpace
from lightning_l2o.tasks.datasets import ImageDataset
from lightning_l2o.tasks.spec import TaskSpec

Batch = tuple[Tensor, ...]


class Task(ABC):
    """One optimizee problem built from a :class:`TaskSpec`.

    A task is stateless during optimization: the inner loop owns the parameters (a flat vector laid
    out by :attr:`layout`) and a ``torch.Generator`` from which initial parameters and batches are
    drawn, so an optimizee's whole training is reproducible from its seed.
    """

    family: str = ""
    has_accuracy: bool = False

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> Task:
        """Move the task's tensors, modules and datasets to ``device`` (generators stay on the CPU)."""
        self.device = torch.device(device)
        self.__dict__.pop("space", None)
        for name, value in list(vars(self).items()):
            if isinstance(value, (Tensor, nn.Module, ImageDataset)):
                setattr(self, name, value.to(self.device))
        return self

    @property
    @abstractmethod
    def layout(self) -> ParamLayout:
        """Names and shapes of the optimizee's parameters."""

    @cached_property
    def space(self) -> ParamSpace:
        """The optimizee's static description on the task's device, shared by all tasks of one architecture."""
        return ParamSpace.of_layout(self.layout, self.device)

    def generator(self) -> torch.Generator:
        """A fresh generator for this task's initial parameters and batches."""
        return torch.Generator().manual_seed(self.spec.seed)

    def problem_generator(self) -> torch.Generator:
        """Generator for the problem instance itself (matrices, synthetic data), separate from batches."""
        return torch.Generator().manual_seed(1_000_003 * self.spec.seed + 17)

    @abstractmethod
    def init_params(self, generator: torch.Generator) -> Tensor:
        """Sample initial parameters: a flat ``(layout.total,)`` vector."""

    @abstractmethod
    def sample_batch(self, generator: torch.Generator) -> Batch:
        """Draw one training batch (an empty tuple for deterministic objectives)."""

    @abstractmethod
    def loss(self, params: Tensor, batch: Batch) -> Tensor:
        """Scalar training loss of flat ``params`` on ``batch``; differentiable in ``params``."""

    @abstractmethod
    def evaluate(self, params: Tensor) -> dict[str, float]:
        """Full-data metrics: ``train_loss``, ``test_loss`` and ``test_accuracy`` (NaN where undefined)."""


class ModuleTask(Task):
    """A task whose model is an ``nn.Module`` evaluated with ``torch.func.functional_call``."""

    def __init__(self, spec: TaskSpec, module: nn.Module) -> None:
        super().__init__(spec)
        self.module = module.requires_grad_(False)
        self._layout = ParamLayout.from_tensors(module.named_parameters())

    @property
    def layout(self) -> ParamLayout:
        return self._layout

    @cached_property
    def space(self) -> ParamSpace:
        """Layout, segment ids and the module's neural graph (built on first use), cached per architecture."""
        return ParamSpace.of_module(self.module, self.device)

    def forward(self, params: Tensor, inputs: Tensor) -> Tensor:
        return functional_call(self.module, self._layout.unflatten(params), (inputs,))

    def init_params(self, generator: torch.Generator) -> Tensor:
        """PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases, from ``generator``."""
        tensors = []
        for name, param in self.module.named_parameters():
            owner = self.module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.module
            weight = owner.weight
            fan_in = weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            tensors.append((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
        return ParamLayout.flatten(tensors).to(self.device)
