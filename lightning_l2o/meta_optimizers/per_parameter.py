"""Per-parameter learned optimizers: a small network applied to every coordinate's features at once.

The network reads each parameter's features ``(n, F)`` (:mod:`~lightning_l2o.meta_optimizers.features`)
and outputs two numbers ``(a, b)`` per parameter; the update is ``delta = lr * a * exp(exp_scale * b)``
and ``theta <- theta + delta`` (Kofinas et al. 2024: ``lr = exp_scale = 0.01``; Metz et al. 2019:
``0.001``). All parameters of the optimizee go through one batched call.

Inductive biases (constructor arguments, so YAML options): ``progress_features`` appends training-progress
features; ``adam_lr`` makes the update a learned correction on top of an Adam step, ``theta <- adam(theta) +
delta``, with the output layer zero-initialised so that the untrained rule is Adam; ``output_scale`` shrinks
the output layer's initial weights so that an untrained random draw takes small steps.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import Info, MetaOptimizer, State, check_positive
from lightning_l2o.meta_optimizers.baselines import Adam
from lightning_l2o.meta_optimizers.features import build_feature_set
from lightning_l2o.params import ParamSpace

OUTPUTS = 2  # direction a and log-magnitude b
ADAM_STATE_PREFIX = "adam_"


class PerParameterOptimizer(MetaOptimizer):
    """Base of FF, LSTM and PNA: features -> :meth:`network_step` -> ``(a, b)`` -> ``theta + lr a exp(exp_scale b)``.

    A subclass builds its network (``self.network``) after ``super().__init__``, then calls
    :meth:`init_output_layer`. Its ``info``: ``update_rms``, the RMS of the whole update, and with ``adam_lr``
    ``correction_rms``, that of the learned term.

    Args:
        features: ``kofinas``, ``metz`` (normalised per tensor) or ``adam`` (Adam-normalised).
        hidden_dim: width of the network's hidden layers.
        num_layers: number of hidden layers.
        lr: the step scale lambda (default: 0.01 for ``kofinas``, 0.001 for ``metz`` and ``adam``); the deployed
            optimizer's lr.
        exp_scale: scale of ``b`` inside the exponential (default: the same as ``lr``'s default).
        progress_features: append the 11 training-progress features ``tanh(t / s - 1)`` of ``metz`` (which has
            them already) to the features.
        adam_lr: if set, ``theta <- theta - adam_lr * m_hat / (sqrt(v_hat) + 1e-8) + delta``: the step of
            ``torch.optim.Adam`` (betas 0.9, 0.999; moments in the rule's state under ``adam_*``) plus the learned
            term, whose output layer starts at zero, so the untrained rule is Adam at ``adam_lr``. A caller's
            ``lr`` other than :attr:`lr` scales both terms (the Adam step runs at ``adam_lr * lr / self.lr``).
            Meta-gradients see the Adam step as ``theta +`` a constant: its derivative in the gradient (~1 / eps
            where ``g ~ 0``, NaN where ``g`` has been exactly 0, e.g. a dead ReLU's weights) would swamp them.
        output_scale: factor on the initial weights and bias of the network's output layer (e.g. 0.01: an
            untrained random draw's first updates are ~100x smaller); 1.0 is PyTorch's default init.
        config: a subclass's further constructor arguments, recorded for checkpoints.
    """

    def __init__(
        self, features: str = "kofinas", hidden_dim: int = 64, num_layers: int = 2, lr: float | None = None,
        exp_scale: float | None = None, progress_features: bool = False, adam_lr: float | None = None,
        output_scale: float = 1.0, **config: Any,
    ) -> None:
        owner = type(self).__name__
        feature_set = build_feature_set(features, progress_features)
        lr = feature_set.default_step_scale if lr is None else lr
        exp_scale = feature_set.default_step_scale if exp_scale is None else exp_scale
        check_positive(owner, hidden_dim=hidden_dim, num_layers=num_layers, lr=lr, exp_scale=exp_scale)
        if adam_lr is not None and not adam_lr > 0:
            raise ConfigError(f"{owner}: adam_lr must be > 0, got {adam_lr}; give the Adam step's learning rate "
                              f"(e.g. 0.001), or null for no Adam step")
        if not output_scale > 0:
            raise ConfigError(f"{owner}: output_scale must be > 0, got {output_scale}; e.g. 0.01 for small initial "
                              f"updates, or 1.0 for PyTorch's default init")
        if adam_lr is not None and output_scale != 1.0:
            raise ConfigError(f"{owner}: output_scale={output_scale} has no effect with adam_lr, whose output layer "
                              f"starts at zero (the untrained rule is Adam); remove output_scale or set adam_lr: null")
        super().__init__(features=features, hidden_dim=hidden_dim, num_layers=num_layers, lr=lr, exp_scale=exp_scale,
                         progress_features=progress_features, adam_lr=adam_lr, output_scale=output_scale, **config)
        self.features = feature_set
        self.lr, self.exp_scale, self.output_scale = lr, exp_scale, output_scale
        self.adam = None if adam_lr is None else Adam(lr=adam_lr)

    @property
    def output_layer(self) -> nn.Linear:
        """The network's last layer, ``hidden -> 2``: what ``adam_lr`` and ``output_scale`` initialise."""
        return self.network.output_layer

    def init_output_layer(self) -> None:
        """Scale the freshly initialised :attr:`output_layer`: to zero with ``adam_lr``, else by ``output_scale``."""
        scale = 0.0 if self.adam is not None else self.output_scale
        with torch.no_grad():
            self.output_layer.weight.mul_(scale)
            self.output_layer.bias.mul_(scale)

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        adam_state = {} if self.adam is None else _prefixed(self.adam.init_state(params, space))
        return {**self.features.init_state(params, space), **self.init_network_state(params), **adam_state}

    def init_network_state(self, params: Tensor) -> State:
        """The network's own per-parameter state (none for a feed-forward network)."""
        return {}

    @abstractmethod
    def network_step(self, features: Tensor, state: State, space: ParamSpace) -> tuple[Tensor, State]:
        """``features (n, F)`` -> outputs ``(n, 2)`` and the network's new state."""

    def forward(self, params: Tensor, grads: Tensor, loss: Tensor, state: State, space: ParamSpace,
                lr: float | Tensor):
        features, feature_state = self.features(params, grads, state, space)
        outputs, network_state = self.network_step(features, state, space)
        delta = lr * outputs[:, 0] * torch.exp(self.exp_scale * outputs[:, 1])
        if self.adam is None:
            return params + delta, {**feature_state, **network_state}, {"update_rms": _rms(delta)}
        adam_state = {key[len(ADAM_STATE_PREFIX):]: value for key, value in state.items()
                      if key.startswith(ADAM_STATE_PREFIX)}
        adam_lr = self.adam.lr * (lr / self.lr)
        stepped, adam_state, _ = self.adam(params.detach(), grads.detach(), loss, adam_state, space, adam_lr)
        stepped = stepped + (params - params.detach())  # the same values, and d stepped / d params = 1
        info: Info = {"update_rms": _rms(stepped - params + delta), "correction_rms": _rms(delta)}
        return stepped + delta, {**feature_state, **network_state, **_prefixed(adam_state)}, info


def _prefixed(adam_state: State) -> State:
    return {ADAM_STATE_PREFIX + key: value for key, value in adam_state.items()}


def _rms(x: Tensor) -> Tensor:
    return x.detach().square().mean().sqrt()
