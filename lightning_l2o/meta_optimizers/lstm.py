"""The coordinatewise LSTM learned optimizer (Andrychowicz et al. 2016; Metz et al. 2020)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_l2o.meta_optimizers.base import State
from lightning_l2o.meta_optimizers.features import ChunkFeatures
from lightning_l2o.meta_optimizers.linear import linear
from lightning_l2o.meta_optimizers.per_parameter import OUTPUTS, PerParameterOptimizer
from lightning_l2o.params import ParamSpace


class CoordinatewiseLSTM(nn.Module):
    """A stack of ``num_layers`` LSTM cells shared by all coordinates, and a linear head.

    ``features (n, F)``, state ``h, c (num_layers, n, hidden)`` -> outputs ``(n, out_features)`` and the new ``h, c``.
    """

    def __init__(self, in_features: int, hidden_dim: int, num_layers: int, out_features: int = OUTPUTS) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.cells = nn.ModuleList(
            nn.LSTMCell(in_features if i == 0 else hidden_dim, hidden_dim) for i in range(num_layers)
        )
        self.head = nn.Linear(hidden_dim, out_features)

    @property
    def output_layer(self) -> nn.Linear:
        """The linear head, ``hidden -> out_features``."""
        return self.head

    def reset_parameters(self) -> None:
        for cell in self.cells:
            cell.reset_parameters()
        self.head.reset_parameters()

    def initial_state(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        zeros = like.new_zeros(len(self.cells), n, self.hidden_dim)
        return zeros, zeros.clone()

    def gate_weights(self) -> list[tuple[Tensor, Tensor]]:
        """Each cell's :func:`gate_weights`, for :meth:`forward` on many chunks of one step."""
        return [gate_weights(cell) for cell in self.cells]

    def forward(self, features: Tensor, h: Tensor, c: Tensor,
                gates: list[tuple[Tensor, Tensor]] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``gates``: :meth:`gate_weights`, built here if not given."""
        x, hs, cs = features, [], []
        for layer, (weight, bias) in enumerate(self.gate_weights() if gates is None else gates):
            x, c_new = lstm_cell(x, h[layer], c[layer], weight, bias)
            hs.append(x)
            cs.append(c_new)
        return linear(x, self.head.weight, self.head.bias), _stack(hs), _stack(cs)


def gate_weights(cell: nn.LSTMCell) -> tuple[Tensor, Tensor]:
    """The weight and bias of :func:`lstm_cell`'s one product: ``[W_ih, W_hh]`` and ``b_ih + b_hh``, the cell gate's
    rows doubled (exactly).

    Shapes: ``cell (in -> hidden)`` -> ``weight (4 hidden, in + hidden)``, ``bias (4 hidden,)``.
    """
    scale = torch.ones(4, 1, 1, dtype=cell.weight_ih.dtype, device=cell.weight_ih.device)
    scale[2] = 2.0  # PyTorch's gate order: input, forget, cell, output
    weight = (torch.cat([cell.weight_ih, cell.weight_hh], dim=1).view(4, cell.hidden_size, -1) * scale).flatten(0, 1)
    return weight, ((cell.bias_ih + cell.bias_hh).view(4, -1) * scale[:, 0]).flatten()


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """``cell(x, (h, c))`` with ``weight, bias = gate_weights(cell)``, computed for speed on the CPU: the four gates
    come from one product, ``[x, h] @ weight.T + bias``, through
    :func:`~lightning_l2o.meta_optimizers.linear.linear` (oneDNN), and go through one sigmoid; each ``tanh`` is
    ``2 sigmoid(2 z) - 1`` (hence the doubled cell-gate rows), because PyTorch's CPU ``tanh`` takes several times
    as long as its ``sigmoid``.

    Shapes: ``x (c, in)``, ``h, c (c, hidden)``, ``weight (4 hidden, in + hidden)``, ``bias (4 hidden,)`` -> new
    ``h, c (c, hidden)``.
    """
    gates = torch.sigmoid(linear(torch.cat([x, h], dim=1), weight, bias))
    input_gate, forget_gate, doubled_cell_gate, output_gate = gates.chunk(4, dim=1)
    c_new = forget_gate * c + input_gate * (2 * doubled_cell_gate - 1)
    return output_gate * (2 * torch.sigmoid(2 * c_new) - 1), c_new


def _stack(tensors: list[Tensor]) -> Tensor:
    """``torch.stack(tensors)``; one tensor becomes a view (the state of a one-layer LSTM is not copied)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


class LSTMMetaOptimizer(PerParameterOptimizer):
    """An LSTM over time on each parameter's features (Kofinas et al.'s best: ``hidden_dim=32, num_layers=1``).

    Args:
        hidden_dim: size of the LSTM's hidden state.
        num_layers: number of stacked LSTM cells.
        options: the other arguments of :class:`~lightning_l2o.meta_optimizers.per_parameter.PerParameterOptimizer`.
    """

    network_state_dims: ClassVar[dict[str, int]] = {"lstm_h": 1, "lstm_c": 1}

    def __init__(self, hidden_dim: int = 32, num_layers: int = 1, **options: Any) -> None:
        super().__init__(hidden_dim=hidden_dim, num_layers=num_layers, **options)
        self.network = CoordinatewiseLSTM(self.features.num_features, hidden_dim, num_layers, self.num_outputs)
        self.init_output_layer()

    @property
    def name(self) -> str:
        return "lstm"

    def init_network_state(self, params: Tensor, space: ParamSpace) -> State:
        h, c = self.network.initial_state(len(params), params)
        return {"lstm_h": h, "lstm_c": c}

    def network_context(self, features: ChunkFeatures, space: ParamSpace, state: State,
                        ) -> tuple[list[tuple[Tensor, Tensor]], State]:
        """The cells' gate weights, built once per step for all chunks."""
        return self.network.gate_weights(), {}

    def network_chunk(self, features: Tensor, state: State, rows: slice, context: Any) -> tuple[Tensor, State]:
        outputs, h, c = self.network(features, state["lstm_h"], state["lstm_c"], context)
        return outputs, {"lstm_h": h, "lstm_c": c}
