"""The per-parameter feed-forward (FF) learned optimizer (Metz et al. 2019; the FF baseline of Kofinas et al. 2024)."""

from __future__ import annotations

import itertools
from typing import Any

from torch import Tensor, nn

from lightning_l2o.meta_optimizers import fused_ff
from lightning_l2o.meta_optimizers.base import State
from lightning_l2o.meta_optimizers.linear import linear
from lightning_l2o.meta_optimizers.per_parameter import OUTPUTS, PerParameterOptimizer
from lightning_l2o.params import ParamSpace


class PerParameterMLP(nn.Module):
    """``(n, F)`` -> ``num_layers`` x (Linear(hidden) -> ReLU) -> Linear(out_features) -> ``(n, out_features)``.

    The layers run through :func:`~lightning_l2o.meta_optimizers.linear.linear` (oneDNN on the CPU, bias and ReLU
    fused); ``net`` holds them as an ``nn.Sequential`` of ``Linear`` / ``ReLU`` (the checkpoint layout).
    """

    def __init__(self, in_features: int, hidden_dim: int, num_layers: int, out_features: int = OUTPUTS) -> None:
        super().__init__()
        widths = [in_features] + [hidden_dim] * num_layers
        layers: list[nn.Module] = []
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], out_features))

    @property
    def output_layer(self) -> nn.Linear:
        """The last layer, ``hidden -> out_features``."""
        return self.net[-1]

    def reset_parameters(self) -> None:
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(self, features: Tensor) -> Tensor:
        return self._layers(features, self.net[0::2])

    def project_shared(self, shared: Tensor) -> Tensor:
        """The first layer's weights on the leading ``D`` inputs, applied to ``R`` rows that many coordinates share
        (e.g. a GNN's edge embeddings): ``shared (R, D)`` -> ``(R, hidden)``, for :meth:`forward_projected`."""
        return linear(shared, self.net[0].weight[:, :shared.shape[1]])

    def forward_projected(self, projected: Tensor, features: Tensor) -> Tensor:
        """``forward(cat([shared[index], features], 1))`` given ``projected = project_shared(shared)[index]``
        ``(c, hidden)`` and each coordinate's own ``features (c, F)``: ``(c, out_features)``."""
        first = self.net[0]
        own_weight = first.weight[:, first.in_features - features.shape[1]:]
        hidden = projected + linear(features, own_weight, first.bias)
        return self._layers(hidden.relu_(), self.net[2::2])

    @staticmethod
    def _layers(hidden: Tensor, layers: nn.Sequential) -> Tensor:
        """``hidden`` through ``layers``, each but the last followed by a ReLU."""
        for layer in layers[:-1]:
            hidden = linear(hidden, layer.weight, layer.bias, relu=True)
        return linear(hidden, layers[-1].weight, layers[-1].bias)


class FFMetaOptimizer(PerParameterOptimizer):
    """An MLP on each parameter's features (Kofinas et al.'s best: ``hidden_dim=64, num_layers=2``).

    A deployed step with ``kofinas`` features runs through a compiled CPU kernel
    (:mod:`~lightning_l2o.meta_optimizers.fused_ff`), with the same results to float rounding.

    Args:
        hidden_dim: width of the MLP's hidden layers.
        num_layers: number of hidden layers.
        options: the other arguments of :class:`~lightning_l2o.meta_optimizers.per_parameter.PerParameterOptimizer`.
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 2, **options: Any) -> None:
        super().__init__(hidden_dim=hidden_dim, num_layers=num_layers, **options)
        self.network = PerParameterMLP(self.features.num_features, hidden_dim, num_layers, self.num_outputs)
        self.init_output_layer()

    @property
    def name(self) -> str:
        return "ff"

    def forward(self, params: Tensor, grads: Tensor, loss: Tensor, state: State, space: ParamSpace,
                lr: float | Tensor):
        if fused_ff.applies(self, params, grads, state):
            return fused_ff.fused_ff_step(self, params, grads, state, lr)
        return super().forward(params, grads, loss, state, space, lr)

    def network_chunk(self, features: Tensor, state: State, rows: slice, context: Any) -> tuple[Tensor, State]:
        return self.network(features), {}
