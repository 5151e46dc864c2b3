"""The one interface every update rule implements, learned or hand-designed.

An update rule is a pure function of (params, grads, loss, state, space, lr): it returns new parameters,
a new state and an ``info`` dict of what callbacks show (effective lr, momentum, embeddings). All
tensors are flat over every parameter of the optimizee, so one call updates all parameters at once.
``space`` (:class:`~lightning_l2o.params.ParamSpace`) is the optimizee's static description (layout,
segment ids, neural graph), given on every call; the state holds only what changes from step to step. The same ``forward`` runs in the differentiable inner
loop of meta-training, in meta-test, and under ``torch.no_grad()`` in the deployable optimizer; there (within
:data:`deployed_step`) a rule may compute it with faster kernels that agree to float rounding rather than bit for
bit, while meta-training and meta-test keep one path so that the harness's figures reproduce exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.params import ParamSpace
from lightning_l2o.switch import Switch

State = dict[str, Tensor]
Info = dict[str, Tensor]

NUM_STEPS_KEY = "num_steps"
"""The state key of the run's number of steps, for a rule that reads the training progress
(:attr:`MetaOptimizer.uses_horizon`)."""

UPDATE_RULES: dict[str, type[MetaOptimizer]] = {}
"""Every concrete :class:`MetaOptimizer` subclass defined so far, by class path: what a checkpoint may build."""


deployed_step = Switch(False, per_thread=True)
"""``with deployed_step():`` marks the rule calls within (in this thread) as steps of a deployed optimizer
(``LearnedOptimizer.step``), where a rule may use kernels whose results agree with its default path to float rounding
(the FF rule's compiled CPU kernel); per thread, so that a deployed step in one thread leaves a meta-test in another
alone."""


def in_deployed_step() -> bool:
    """Whether the current rule call is a deployed optimizer's step (see :data:`deployed_step`)."""
    return bool(deployed_step)


def class_path(cls: type) -> str:
    """``module.QualifiedName`` of ``cls``, the form configs and checkpoints name classes by."""
    return f"{cls.__module__}.{cls.__qualname__}"


class MetaOptimizer(nn.Module, ABC):
    """Base class of update rules.

    Subclasses pass their constructor arguments to ``super().__init__(**config)`` so that a trained
    rule can be rebuilt from a checkpoint without the training code
    (:func:`lightning_l2o.optim.load_learned_optimizer`).

    Attributes:
        lr: the default step size, used when a caller gives none (the deploy wrapper's ``lr``).
        uses_loss: whether ``forward`` reads ``loss`` (the deploy wrapper then requires it).
        uses_horizon: whether ``forward`` reads the run's number of steps (the training progress ``t / T``), which
            :meth:`start_state` puts in the state (the deploy wrapper then requires ``num_steps``).
        execution_options: constructor arguments a checkpoint need not match (how the rule runs, not what it is).
    """

    lr: float
    uses_loss: bool = False
    uses_horizon: bool = False
    execution_options: tuple[str, ...] = ()
    """Constructor arguments that change how the rule runs, not what it computes (e.g. ``chunk_size``): a checkpoint
    resumes under other values of them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        UPDATE_RULES[class_path(cls)] = cls

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def name(self) -> str:
        """Method name used in logs and tables, e.g. ``opt2vec`` or ``adam``."""
        return type(self).__name__.lower()

    @property
    def is_learned(self) -> bool:
        return any(True for _ in self.parameters())

    def check_space(self, space: ParamSpace) -> None:
        """Raise a :class:`~lightning_l2o.errors.ConfigError` with the fix where this rule cannot update the
        optimizee ``space`` describes (e.g. a GNN rule and an optimizee without a neural graph); every rule here
        accepts every optimizee unless it says otherwise. Meta-training checks every task template with it first."""

    @abstractmethod
    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        """Optimizer state for flat ``params`` of shape ``(n,)``; all values are tensors."""

    def start_state(self, params: Tensor, space: ParamSpace, num_steps: int | None = None) -> State:
        """The state a run of ``num_steps`` steps starts from: :meth:`init_state`, and for a rule that
        :attr:`uses_horizon` also ``num_steps`` (a 0-d tensor under :data:`NUM_STEPS_KEY`, carried by ``forward``)."""
        state = self.init_state(params, space)
        if self.uses_horizon:
            if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
                raise ConfigError(f"{type(self).__name__} reads the training progress t / T and needs the run's number "
                                  f"of steps T: give num_steps (a positive integer, e.g. the trainer's max_steps), "
                                  f"got {num_steps!r}")
            state[NUM_STEPS_KEY] = params.new_tensor(float(num_steps))
        return state

    @abstractmethod
    def forward(
        self, params: Tensor, grads: Tensor, loss: Tensor, state: State, space: ParamSpace, lr: float | Tensor
    ) -> tuple[Tensor, State, Info]:
        """One update. ``params``, ``grads``: ``(n,)``; ``loss``: scalar; returns ``(params', state', info)``."""


def check_positive(owner: str, **values: float) -> None:
    """Raise a ``ValueError`` naming the first argument that is not > 0."""
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"{owner}: {key} must be > 0, got {value}")


def check_fraction(owner: str, **values: float) -> None:
    """Raise a ``ValueError`` naming the first argument outside [0, 1)."""
    for key, value in values.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{owner}: {key} must be in [0, 1), got {value}")


def as_tensor(value: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)
