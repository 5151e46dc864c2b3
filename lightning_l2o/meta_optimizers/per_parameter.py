"""Per-parameter learned optimizers: a small network applied to every coordinate's features at once.

The network reads each parameter's features ``(n, F)`` (:mod:`~lightning_l2o.meta_optimizers.features`)
and outputs two numbers ``(a, b)`` per parameter; the update is ``delta = lr * a * exp(exp_scale * b)``
and ``theta <- theta + delta`` (Kofinas et al. 2024: ``lr = exp_scale = 0.01``; Metz et al. 2019:
``0.001``). All parameters of the optimizee go through one batched call.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from lightning_l2o.meta_optimizers.base import Info, MetaOptimizer, State, check_positive
from lightning_l2o.meta_optimizers.features import build_feature_set
from lightning_l2o.params import ParamSpace

OUTPUTS = 2  # direction a and log-magnitude b


class PerParameterOptimizer(MetaOptimizer):
    """Base of FF and LSTM: features -> :meth:`network_step` -> ``(a, b)`` -> ``theta + lr a exp(exp_scale b)``.

    Args:
        features: ``kofinas`` or ``metz``.
        hidden_dim: width of the network's hidden layers.
        num_layers: number of hidden layers.
        lr: the step scale lambda (default: 0.01 for ``kofinas``, 0.001 for ``metz``); the deployed optimizer's lr.
        exp_scale: scale of ``b`` inside the exponential (default: the same as ``lr``'s default).
        config: a subclass's further constructor arguments, recorded for checkpoints.
    """

    def __init__(
        self, features: str = "kofinas", hidden_dim: int = 64, num_layers: int = 2, lr: float | None = None,
        exp_scale: float | None = None, **config: Any,
    ) -> None:
        feature_set = build_feature_set(features)
        lr = feature_set.default_step_scale if lr is None else lr
        exp_scale = feature_set.default_step_scale if exp_scale is None else exp_scale
        check_positive(type(self).__name__, hidden_dim=hidden_dim, num_layers=num_layers, lr=lr, exp_scale=exp_scale)
        super().__init__(features=features, hidden_dim=hidden_dim, num_layers=num_layers, lr=lr, exp_scale=exp_scale,
                         **config)
        self.features = feature_set
        self.lr, self.exp_scale = lr, exp_scale

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {**self.features.init_state(params, space), **self.init_network_state(params)}

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
        info: Info = {"update_rms": delta.detach().square().mean().sqrt()}
        return params + delta, {**feature_state, **network_state}, info
