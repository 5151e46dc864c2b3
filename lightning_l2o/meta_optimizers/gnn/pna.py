"""The PNA meta-optimizer on neural graphs (Kofinas et al. 2024, ``pna_noscale``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import DEFAULT_KERNEL_SIZE, NeuralGraph
from lightning_l2o.meta_optimizers.base import State, check_positive
from lightning_l2o.meta_optimizers.features import ALL, ChunkFeatures
from lightning_l2o.meta_optimizers.ff import PerParameterMLP
from lightning_l2o.meta_optimizers.gnn.layers import EdgeUpdate, FiLMPNAConv, LayerPositionEmbedding, compose
from lightning_l2o.meta_optimizers.linear import linear
from lightning_l2o.meta_optimizers.per_parameter import DEFAULT_CHUNK_SIZE, PerParameterOptimizer
from lightning_l2o.params import ParamSpace

TASK_17_LAYOUT = (1, 16, 32, 32, 10)


def degree_histogram(layer_layout: Sequence[int]) -> Tensor:
    """In-degree histogram of a neural graph with reverse edges: a node of layer ``l`` hears layers ``l -+ 1``."""
    widths = list(layer_layout)
    degrees = [(widths[i - 1] if i > 0 else 0) + (widths[i + 1] if i + 1 < len(widths) else 0)
               for i in range(len(widths))]
    return torch.bincount(torch.repeat_interleave(torch.tensor(degrees), torch.tensor(widths)))


def _readout(channels: int) -> nn.Sequential:
    return nn.Sequential(Linear(channels, channels), nn.ReLU(), Linear(channels, channels))


class PNANetwork(nn.Module):
    """PNA over a neural graph: per-parameter features in, an embedding per edge (weight kernel) and node out.

    Input projections: each edge's padded kernel features ``(K*K*F)`` go to a forward-edge and a reverse-edge
    embedding (the projection of ``[E, E^T, E + E^T]``, which for a forward edge is ``[e, 0, e]`` and for its
    reverse ``[0, e, e]``, folded into one product); bias features ``(F)`` go to node embeddings, plus layer
    position embeddings. Then ``num_layers`` :class:`FiLMPNAConv` layers, each but the last followed by a
    node-wise layer norm, SiLU and an :class:`EdgeUpdate` (whose output projection is folded into the next
    layer's edge products and the edge read-out); read-out MLPs on edges and nodes.

    Shapes:
        - input: per-parameter features ``(n, F)``, a :class:`~lightning_l2o.graphs.NeuralGraph` with ``E``
          (forward) edges and ``N`` nodes
        - output: forward-edge embeddings ``(E, C)``, node embeddings ``(N, C)``
    """

    def __init__(
        self, in_features: int, channels: int, num_layers: int, aggregators: Sequence[str], scalers: Sequence[str],
        deg: Tensor, kernel_size: int, max_inputs: int, max_hidden_layers: int, max_outputs: int,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.edge_in = Linear(kernel_size**2 * in_features, 2 * channels)
        self.node_in = Linear(in_features, channels)
        self.positions = LayerPositionEmbedding(channels, max_inputs, max_hidden_layers, max_outputs)
        self.convs = nn.ModuleList(FiLMPNAConv(channels, aggregators, scalers, deg) for _ in range(num_layers))
        self.norms = nn.ModuleList(
            normalization_resolver("layer_norm", channels, mode="node") for _ in range(num_layers - 1))
        self.edge_updates = nn.ModuleList(EdgeUpdate(channels) for _ in range(num_layers - 1))
        self.act = activation_resolver("silu")
        self.edge_out, self.node_out = _readout(channels), _readout(channels)

    def reset_parameters(self) -> None:
        for module in (self.edge_in, self.node_in, self.positions, *self.convs, *self.norms, *self.edge_updates):
            module.reset_parameters()
        for readout in (self.edge_out, self.node_out):
            for layer in readout:
                if isinstance(layer, Linear):
                    layer.reset_parameters()

    def forward(self, features: Tensor, graph: NeuralGraph) -> tuple[Tensor, Tensor]:
        if graph.kernel_size != self.kernel_size:
            raise ConfigError(f"the neural graph pads kernels to {graph.kernel_size}x{graph.kernel_size} but this PNA "
                              f"reads {self.kernel_size}x{self.kernel_size}; build the graph with "
                              f"kernel_size={self.kernel_size}")
        edge_features, node_features = graph.to_graph(features)
        edge_in = linear(edge_features, self.edge_in.weight, self.edge_in.bias)
        edge_attr = torch.cat(edge_in.chunk(2, dim=-1))[graph.bidirectional_order]
        edge_index, target_ptr = graph.bidirectional_edge_index, graph.bidirectional_ptr
        x = self.node_in(node_features) + self.positions(graph)
        edge_projection: Linear | None = None  # the edge embeddings are edge_projection(edge_attr)
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index, edge_attr, edge_projection, target_ptr)
            if i < last:
                x = self.act(self.norms[i](x))
                edge_attr = self.edge_updates[i](x, edge_index, edge_attr, edge_projection)
                edge_projection = self.edge_updates[i].lin_out
        first = linear(edge_attr[graph.forward_edge_rows], *compose(self.edge_out[0], edge_projection))
        return self.edge_out[1:](first), self.node_out(x)


class PNAMetaOptimizer(PerParameterOptimizer):
    """PNA on the optimizee's neural graph; each parameter's update from its edge's (or bias node's) embedding.

    The embedding of a weight's edge (a bias's node) is concatenated with the parameter's own features and a
    per-parameter MLP gives ``(a, b)``; ``delta = lr a exp(exp_scale b)`` as in FF. Reference setting
    (``pna_noscale``): ``hidden_dim=64, num_layers=8``, the read-out MLP as deep as the GNN.

    Args:
        features: per-parameter feature set (``kofinas``: 14 features; or ``metz``, ``adam``).
        hidden_dim: node / edge embedding size and the read-out MLP's width.
        num_layers: message-passing layers.
        head_layers: hidden layers of the per-parameter read-out MLP (default: ``num_layers``).
        lr, exp_scale, progress_features, adam_lr, output_scale, chunk_size, network_dtype, adam_scale, adam_beta2,
        adam_fast_beta2, shape_features, adam_schedule, schedule_horizon: as in
            :class:`~lightning_l2o.meta_optimizers.per_parameter.PerParameterOptimizer` (``adam_lr`` and
            ``output_scale`` act on the per-parameter MLP's output layer; the GNN runs on the whole graph, the
            read-out MLP in chunks and, with ``network_dtype: bfloat16``, in bf16).
        aggregators, scalers: PNA's aggregators and degree scalers.
        degree_layout: layer widths of the graph whose degree histogram normalises the scalers (task 17).
        kernel_size: edges carry kernels padded to ``kernel_size x kernel_size``.
        max_inputs, max_hidden_layers, max_outputs: size of the position-embedding table.
    """

    def __init__(
        self, features: str = "kofinas", hidden_dim: int = 64, num_layers: int = 8, head_layers: int | None = None,
        lr: float | None = None, exp_scale: float | None = None, progress_features: bool = False,
        adam_lr: float | None = None, output_scale: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE,
        network_dtype: str = "float32", adam_scale: bool = False, adam_beta2: float = 0.999,
        adam_fast_beta2: float | None = None, shape_features: bool = False, adam_schedule: bool = False,
        schedule_horizon: bool = False, aggregators: Sequence[str] = ("mean", "min", "max", "std"), scalers: Sequence[str] = ("identity", "amplification"),
        degree_layout: Sequence[int] = TASK_17_LAYOUT, kernel_size: int = DEFAULT_KERNEL_SIZE, max_inputs: int = 1024,
        max_hidden_layers: int = 32, max_outputs: int = 1024,
    ) -> None:
        head_layers = num_layers if head_layers is None else head_layers
        check_positive("PNAMetaOptimizer", head_layers=head_layers, kernel_size=kernel_size, max_inputs=max_inputs,
                       max_hidden_layers=max_hidden_layers, max_outputs=max_outputs)
        if len(degree_layout) < 2 or min(degree_layout) < 1:
            raise ConfigError(f"PNAMetaOptimizer: degree_layout must list >= 2 positive layer widths, got {degree_layout}")
        super().__init__(features, hidden_dim, num_layers, lr, exp_scale, progress_features, adam_lr, output_scale,
                         chunk_size, network_dtype, adam_scale, adam_beta2, adam_fast_beta2, shape_features,
                         adam_schedule, schedule_horizon, head_layers=head_layers,
                         aggregators=list(aggregators), scalers=list(scalers), degree_layout=list(degree_layout), kernel_size=kernel_size,
                         max_inputs=max_inputs, max_hidden_layers=max_hidden_layers, max_outputs=max_outputs)
        num_features = self.features.num_features
        self.network = PNANetwork(num_features, hidden_dim, num_layers, aggregators, scalers,
                                  degree_histogram(degree_layout), kernel_size, max_inputs, max_hidden_layers, max_outputs)
        self.head = PerParameterMLP(hidden_dim + num_features, hidden_dim, head_layers, self.num_outputs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default init, but He init for the read-out's hidden layers: with the default, 8 ReLU layers
        shrink the input's signal ~10^4-fold and every parameter gets nearly the same update. The read-out's
        output layer is then scaled as ``output_scale`` / ``adam_lr`` ask."""
        self.network.reset_parameters()
        self.head.reset_parameters()
        for layer in self.head.net[:-1]:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        self.init_output_layer()

    @property
    def name(self) -> str:
        return "pna"

    @property
    def output_layer(self) -> nn.Linear:
        return self.head.output_layer

    def network_context(self, features: ChunkFeatures, space: ParamSpace) -> tuple[Tensor, Tensor]:
        """The GNN on the whole graph: each owner's (edge's or bias node's) embedding through the read-out's first
        layer, ``(R, hidden)``, and the owner of each coordinate, ``(n,)``."""
        graph = space.require_graph(type(self).__name__)
        edge_embeddings, node_embeddings = self.network(features(ALL), graph)
        return self.head.project_shared(graph.owner_table(edge_embeddings, node_embeddings)), graph.param_owner

    def network_chunk(self, features: Tensor, state: State, rows: slice, context: Any) -> tuple[Tensor, State]:
        projected, owner = context
        return self.head.forward_projected(projected[owner[rows]], features), {}
