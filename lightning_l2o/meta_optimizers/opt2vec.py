"""Opt2Vec: a tiny MLP embeds the recent optimization history and turns it into an lr scale and a momentum."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import (
    Info,
    MetaOptimizer,
    State,
    as_tensor,
    check_fraction,
    check_positive,
)
from lightning_l2o.params import ParamSpace

HISTORY_FEATURES = 3  # log loss, log gradient norm, log effective learning rate


class TinyOpt2VecNetwork(nn.Module):
    """Flattened history ``(..., H, 3)`` -> Linear(3H, hidden) -> ReLU -> Linear(hidden, E) -> ``(..., E)``."""

    def __init__(self, history_length: int = 5, hidden_dim: int = 32, embedding_dim: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(-2),
            nn.Linear(history_length * HISTORY_FEATURES, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, embedding_dim),
        )

    def reset_parameters(self) -> None:
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(self, history: Tensor) -> Tensor:
        return self.net(history)


class Opt2Vec(MetaOptimizer):
    """Adaptive learning rate and momentum from an embedding of the last ``history_length`` steps.

    Each step appends ``[log loss, log ||g||, log lr_prev]`` to the history (``lr_prev`` the previous
    step's effective learning rate; the first step fills the whole history with its entry), embeds it
    with :class:`TinyOpt2VecNetwork` and reads two bounded heads:

    - ``lr_scale = max_lr_scale ** tanh(lr_adapter(e))`` in ``[1/max_lr_scale, max_lr_scale]``,
    - ``momentum = sigmoid(momentum_adapter(e))`` in ``(0, 1)``,

    then ``m <- momentum * m + g`` and ``theta <- theta - base_lr * lr_scale * m``. The heads' weights
    start at zero, so an untrained Opt2Vec is SGD with momentum ``initial_momentum`` at ``base_lr``.
    """

    uses_loss = True

    def __init__(
        self,
        base_lr: float = 0.01,
        embedding_dim: int = 16,
        history_length: int = 5,
        hidden_dim: int = 32,
        max_lr_scale: float = 10.0,
        initial_momentum: float = 0.9,
    ) -> None:
        check_positive("Opt2Vec", base_lr=base_lr, embedding_dim=embedding_dim, history_length=history_length,
                       hidden_dim=hidden_dim)
        if not max_lr_scale > 1:
            raise ConfigError(f"Opt2Vec: max_lr_scale must be > 1, got {max_lr_scale}")
        check_fraction("Opt2Vec", initial_momentum=initial_momentum)
        super().__init__(base_lr=base_lr, embedding_dim=embedding_dim, history_length=history_length,
                         hidden_dim=hidden_dim, max_lr_scale=max_lr_scale, initial_momentum=initial_momentum)
        self.lr = base_lr
        self.history_length = history_length
        self.log_max_lr_scale = math.log(max_lr_scale)
        self.initial_momentum = initial_momentum
        self.network = TinyOpt2VecNetwork(history_length, hidden_dim, embedding_dim)
        self.lr_adapter = nn.Linear(embedding_dim, 1)
        self.momentum_adapter = nn.Linear(embedding_dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.network.reset_parameters()
        for head in (self.lr_adapter, self.momentum_adapter):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        p = self.initial_momentum
        nn.init.constant_(self.momentum_adapter.bias, math.log(max(p, 1e-6) / (1 - p)))

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {
            "momentum_buffer": params.new_zeros(params.shape),
            "history": params.new_zeros(self.history_length, HISTORY_FEATURES),
            "lr_scale": params.new_ones(()),
            "step": params.new_zeros(()),
        }

    def forward(self, params: Tensor, grads: Tensor, loss: Tensor, state: State, space: ParamSpace, lr: float | Tensor):
        lr = as_tensor(lr, params)
        loss = as_tensor(loss, params)
        entry = torch.stack([
            (loss.abs() + 1e-12).log(),
            (grads.norm() + 1e-12).log(),
            (lr * state["lr_scale"]).clamp_min(1e-12).log(),  # finite when a scheduler passes through 0
        ])
        shifted = torch.cat([state["history"][1:], entry[None]])
        history = torch.where(state["step"] > 0, shifted, entry.expand_as(shifted))
        embedding = self.network(history)
        lr_scale = torch.exp(self.log_max_lr_scale * torch.tanh(self.lr_adapter(embedding))).squeeze(-1)
        momentum = torch.sigmoid(self.momentum_adapter(embedding)).squeeze(-1)
        buf = momentum * state["momentum_buffer"] + grads
        effective_lr = lr * lr_scale
        new_state = {"momentum_buffer": buf, "history": history, "lr_scale": lr_scale, "step": state["step"] + 1}
        info: Info = {"embedding": embedding, "lr_scale": lr_scale, "momentum": momentum, "lr": effective_lr}
        return params - effective_lr * buf, new_state, info
