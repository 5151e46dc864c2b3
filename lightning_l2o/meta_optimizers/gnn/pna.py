"""The PNA meta-optimizer on neural graphs (Kofinas et al. 2024, ``pna_noscale``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import NeuralGraph
from lightning_l2o.meta_optimizers.gnn.base import GraphMetaOptimizer, GraphNetwork, readout, reset_sequential
from lightning_l2o.meta_optimizers.gnn.layers import EdgeUpdate, FiLMPNAConv, compose
from lightning_l2o.meta_optimizers.linear import linear
from lightning_l2o.meta_optimizers.lstm import gate_weights, lstm_cell

TASK_17_LAYOUT = (1, 16, 32, 32, 10)


def degree_histogram(layer_layout: Sequence[int]) -> Tensor:
    """In-degree histogram of a neural graph with reverse edges: a node of layer ``l`` hears layers ``l -+ 1``."""
    widths = list(layer_layout)
    degrees = [(widths[i - 1] if i > 0 else 0) + (widths[i + 1] if i + 1 < len(widths) else 0)
               for i in range(len(widths))]
    return torch.bincount(torch.repeat_interleave(torch.tensor(degrees), torch.tensor(widths)))


class PNANetwork(GraphNetwork):
    """PNA over a neural graph: per-parameter features in, an embedding per edge (weight kernel) and node out.

    The input embeddings of :class:`~lightning_l2o.meta_optimizers.gnn.base.GraphNetwork` (forward and reverse
    edges: PNA's projection of ``[E, E^T, E + E^T]`` folded into one product), then ``num_layers``
    :class:`FiLMPNAConv` layers, each but the last followed by a node-wise layer norm, SiLU and an
    :class:`EdgeUpdate` (whose output projection is folded into the next layer's edge products and the edge
    read-out); read-out MLPs on edges and nodes. ``recurrent``: PNA-LSTM, each layer's node embeddings first go
    through an ``nn.LSTMCell`` per node (computed as :func:`~lightning_l2o.meta_optimizers.lstm.lstm_cell`) whose
    ``h, c`` carry over from the previous step (the memory), and the layer reads its ``h``.

    Shapes:
        - input: per-parameter features ``(n, F)``, a :class:`~lightning_l2o.graphs.NeuralGraph` with ``E``
          (forward) edges and ``N`` nodes; with ``recurrent``, the memory ``h, c (num_layers, N, C)`` (``None``:
          zeros)
        - output: forward-edge embeddings ``(E, C)``, node embeddings ``(N, C)``, the new memory (``None`` unless
          ``recurrent``)
    """

    def __init__(
        self, in_features: int, channels: int, num_layers: int, aggregators: Sequence[str], scalers: Sequence[str],
        deg: Tensor, recurrent: bool = False, **embedding: Any,
    ) -> None:
        super().__init__(in_features, channels, **embedding)
        self.convs = nn.ModuleList(FiLMPNAConv(channels, aggregators, scalers, deg) for _ in range(num_layers))
        self.norms = nn.ModuleList(
            normalization_resolver("layer_norm", channels, mode="node") for _ in range(num_layers - 1))
        self.edge_updates = nn.ModuleList(EdgeUpdate(channels) for _ in range(num_layers - 1))
        self.act = activation_resolver("silu")
        self.edge_out, self.node_out = readout(channels), readout(channels)
        self.cells = nn.ModuleList(nn.LSTMCell(channels, channels) for _ in range(num_layers)) if recurrent else None
        self.memory_layers = num_layers if recurrent else 0

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in (*self.convs, *self.norms, *self.edge_updates, *(self.cells or ())):
            module.reset_parameters()
        reset_sequential(self.edge_out)
        reset_sequential(self.node_out)

    def forward(self, features: Tensor, graph: NeuralGraph, memory: tuple[Tensor, Tensor] | None = None,
                ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        edge_in, x = self.embed_inputs(features, graph)
        edge_attr = torch.cat(edge_in.chunk(2, dim=-1))[graph.bidirectional_order]
        edge_index, target_ptr = graph.bidirectional_edge_index, graph.bidirectional_ptr
        edge_projection: Linear | None = None  # the edge embeddings are edge_projection(edge_attr)
        last = len(self.convs) - 1
        if self.cells is not None and memory is None:
            memory = (x.new_zeros(len(self.cells), *x.shape), x.new_zeros(len(self.cells), *x.shape))
        hs, cs = [], []
        for i, conv in enumerate(self.convs):
            if self.cells is not None:
                x, c = lstm_cell(x, memory[0][i], memory[1][i], *gate_weights(self.cells[i]))
                hs.append(x)
                cs.append(c)
            x = conv(x, edge_index, edge_attr, edge_projection, target_ptr)
            if i < last:
                x = self.act(self.norms[i](x))
                edge_attr = self.edge_updates[i](x, edge_index, edge_attr, edge_projection)
                edge_projection = self.edge_updates[i].lin_out
        first = linear(edge_attr[graph.forward_edge_rows], *compose(self.edge_out[0], edge_projection))
        return self.edge_out[1:](first), self.node_out(x), (torch.stack(hs), torch.stack(cs)) if hs else None


class PNAMetaOptimizer(GraphMetaOptimizer):
    """PNA on the optimizee's neural graph; each parameter's update from its edge's (or bias node's) embedding.

    The embedding of a weight's edge (a bias's node) is concatenated with the parameter's own features and a
    per-parameter MLP gives ``(a, b)``; ``delta = lr a exp(exp_scale b)`` as in FF. Reference setting
    (``pna_noscale``): ``hidden_dim=64, num_layers=8``, the read-out MLP as deep as the GNN. With ``recurrent``, the
    recurrent PNA-LSTM: every layer's nodes keep an LSTM memory over the optimization steps (in the state, under
    ``gnn_h`` and ``gnn_c``, ``(num_layers, N, hidden_dim)``).

    Args:
        hidden_dim: node / edge embedding size and the read-out MLP's width.
        num_layers: message-passing layers.
        aggregators, scalers: PNA's aggregators and degree scalers.
        degree_layout: layer widths of the graph whose degree histogram normalises the scalers (task 17).
        recurrent: an ``nn.LSTMCell`` per layer on the nodes, its ``h, c`` carried from step to step (PNA-LSTM).
        options: the arguments of :class:`~lightning_l2o.meta_optimizers.gnn.base.GraphMetaOptimizer` and its base.
    """

    def __init__(
        self, hidden_dim: int = 64, num_layers: int = 8, aggregators: Sequence[str] = ("mean", "min", "max", "std"),
        scalers: Sequence[str] = ("identity", "amplification"), degree_layout: Sequence[int] = TASK_17_LAYOUT,
        recurrent: bool = False, **options: Any,
    ) -> None:
        if len(degree_layout) < 2 or min(degree_layout) < 1:
            raise ConfigError(f"PNAMetaOptimizer: degree_layout must list >= 2 positive layer widths, got "
                              f"{degree_layout}")
        super().__init__(hidden_dim=hidden_dim, num_layers=num_layers, aggregators=list(aggregators),
                         scalers=list(scalers), degree_layout=list(degree_layout), recurrent=recurrent, **options)

    def build_network(self, in_features: int) -> PNANetwork:
        config = self.config
        return PNANetwork(in_features, config["hidden_dim"], config["num_layers"], config["aggregators"],
                          config["scalers"], degree_histogram(config["degree_layout"]), config["recurrent"],
                          **self.input_embedding_config)

    @property
    def name(self) -> str:
        return "pna_lstm" if self.config["recurrent"] else "pna"
