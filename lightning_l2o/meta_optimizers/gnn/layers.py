"""Message-passing layers of the GNN meta-optimizers, built on torch_geometric's parts."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import PNAConv
from torch_geometric.nn.aggr import Aggregation, MaxAggregation, MinAggregation
from torch_geometric.nn.dense.linear import Linear

from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import NeuralGraph
from lightning_l2o.meta_optimizers.gnn import message_passing
from lightning_l2o.meta_optimizers.linear import linear


def compose(layer: Linear, projection: Linear | None) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``layer(projection(h))`` as one affine map of ``h`` (``layer``'s own if no projection).

    Lets a consumer of projected edge embeddings run one product per edge instead of two: the ``(C, C)`` product
    of the weights is computed once, not per edge.
    """
    if projection is None:
        return layer.weight, layer.bias
    return layer.weight @ projection.weight, torch.addmv(layer.bias, layer.weight, projection.bias)


class _SortedSegments:
    """Reduces each node's messages as one contiguous segment (``segment``) when given the CSR pointer ``ptr``
    of target-sorted edges and a gradient is to flow, else by ``index`` as usual.

    On the CPU, torch_geometric's ``scatter`` computes max / min with ``scatter_reduce``, whose backward costs
    ~5x the segment reduction's (it also differentiates the zero tensor it scatters into); its forward is the
    faster one, so a reduction without gradient (a deployed step) keeps it.
    """

    def forward(self, x: Tensor, index: Tensor | None = None, ptr: Tensor | None = None,
                dim_size: int | None = None, dim: int = -2) -> Tensor:
        by_segment = ptr is not None and x.requires_grad and torch.is_grad_enabled()
        return super().forward(x, None if by_segment else index, ptr, dim_size, dim)  # type: ignore[misc]


class SortedMaxAggregation(_SortedSegments, MaxAggregation):
    """``MaxAggregation`` that reduces target-sorted edges by segment when given their ``ptr`` (with gradient)."""


class SortedMinAggregation(_SortedSegments, MinAggregation):
    """``MinAggregation`` that reduces target-sorted edges by segment when given their ``ptr`` (with gradient)."""


SORTED_AGGREGATIONS: dict[str, type[Aggregation]] = {"max": SortedMaxAggregation, "min": SortedMinAggregation}


class FiLMPNAConv(PNAConv):
    """``PNAConv`` whose messages are modulated by the edge embedding, FiLM-style (Kofinas et al. 2024).

    ``m_ij = scale(e_ij) * W [x_i, x_j] + shift(e_ij)``, aggregated with ``aggregators`` x ``scalers``
    (:class:`~torch_geometric.nn.aggr.DegreeScalerAggregation`, normalised by the degree histogram ``deg``),
    then ``x_i' = lin(post([x_i, aggregate_i]))`` as in ``PNAConv``. ``W [x_i, x_j]`` is computed per node
    and gathered per edge (it is linear), so only the FiLM projection runs per edge. Edge embeddings may come
    as ``edge_projection(edge_attr)`` (an :class:`EdgeUpdate`'s output); the projection is then folded into the
    FiLM layer (:func:`compose`). Given ``target_ptr``, the CSR pointer of target-sorted edges, the messages and
    their mean / min / max / std run as one compiled kernel on the CPU
    (:func:`~lightning_l2o.meta_optimizers.gnn.message_passing.film_aggregate`: the same values, one pass over the
    edges each way) with the identity and amplification scalers; elsewhere, or if it is unavailable, max and min
    aggregate by segment wherever a gradient flows (:class:`SortedMaxAggregation`) and mean and std stay fused by
    ``index``.

    Args:
        channels: node and edge embedding size ``C``.
        aggregators: e.g. ``["mean", "min", "max", "std"]``.
        scalers: e.g. ``["identity", "amplification"]``.
        deg: in-degree histogram of the training graphs.

    Shapes:
        - input: node embeddings ``(N, C)``, ``edge_index`` ``(2, E)``, edge embeddings (or their
          pre-projection values) ``(E, C)``, optional ``target_ptr`` ``(N + 1,)`` (then ``edge_index`` must be
          sorted by target)
        - output: node embeddings ``(N, C)``
    """

    def __init__(self, channels: int, aggregators: Sequence[str], scalers: Sequence[str], deg: Tensor) -> None:
        aggregations = [SORTED_AGGREGATIONS[name]() if name in SORTED_AGGREGATIONS else name for name in aggregators]
        super().__init__(channels, channels, aggregations, list(scalers), deg, edge_dim=None, towers=1)
        self.film = Linear(channels, 2 * channels)
        fusable = set(aggregators) <= set(message_passing.STATS) and set(scalers) <= {"identity", "amplification"}
        self.stat_rows = [message_passing.STATS.index(name) for name in aggregators] if fusable else None
        self.film.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "film"):  # PNAConv.__init__ resets before the FiLM layer exists
            self.film.reset_parameters()

    def forward(  # type: ignore[override]
        self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, edge_projection: Linear | None = None,
        target_ptr: Tensor | None = None,
    ) -> Tensor:
        pre = self.pre_nns[0][0]
        weight_target, weight_source = pre.weight.split(self.F_in, dim=1)
        target, source = F.linear(x, weight_target, pre.bias), F.linear(x, weight_source)
        film = linear(edge_attr, *compose(self.film, edge_projection))
        if self.stat_rows is not None and target_ptr is not None and message_passing.applies(target, source, film):
            aggregated = self.film_aggregate(target, source, film, edge_index, target_ptr)
        else:
            # propagate_type: (target: Tensor, source: Tensor, film: Tensor, target_ptr: Optional[Tensor])
            aggregated = self.propagate(edge_index, target=target, source=source, film=film, target_ptr=target_ptr)
        return self.lin(self.post_nns[0](torch.cat([x, aggregated], dim=-1)))

    def film_aggregate(self, target: Tensor, source: Tensor, film: Tensor, edge_index: Tensor, target_ptr: Tensor,
                       ) -> Tensor:
        """``propagate``'s result through the compiled kernel: the aggregations, then the degree scalers as
        :class:`~torch_geometric.nn.aggr.DegreeScalerAggregation` applies them."""
        stats = message_passing.film_aggregate(target, source, film, target_ptr, edge_index[0])
        out = stats[:, self.stat_rows].flatten(1)
        degree = target_ptr.diff().to(out.dtype)[:, None]
        return torch.cat([out if scaler == "identity" else out * (torch.log(degree + 1) / self.aggr_module.avg_deg_log)
                          for scaler in self.aggr_module.scaler], dim=-1)

    def message(self, target_i: Tensor, source_j: Tensor, film: Tensor) -> Tensor:  # type: ignore[override]
        scale, shift = film.chunk(2, dim=-1)
        return torch.addcmul(shift, scale, target_i + source_j)

    def aggregate(  # type: ignore[override]
        self, inputs: Tensor, index: Tensor, target_ptr: Tensor | None = None, dim_size: int | None = None,
    ) -> Tensor:
        return self.aggr_module(inputs, index, ptr=target_ptr, dim_size=dim_size, dim=self.node_dim)


class EdgeUpdate(nn.Module):
    """``e' = lin_out(h)``, ``h = silu(W_e e + W_s x_source + W_t x_target)``; the node terms run per node and are
    added to the edges' in one pass (:func:`~lightning_l2o.meta_optimizers.gnn.message_passing.add_node_terms`).

    ``forward`` returns ``h``: the affine ``lin_out`` is left to the consumers of ``e'``, which fold it into
    their own first product (:func:`compose`), one product per edge fewer. ``e`` itself may come as
    ``edge_projection(edge_attr)`` the same way.

    Shapes:
        - input: node embeddings ``(N, C)``, ``edge_index`` ``(2, E)``, edge embeddings (or their
          pre-projection values) ``(E, C)``
        - output: ``h`` ``(E, C)``
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin_edge = Linear(channels, channels)
        self.lin_source = Linear(channels, channels, bias=False)
        self.lin_target = Linear(channels, channels, bias=False)
        self.lin_out = Linear(channels, channels)

    def reset_parameters(self) -> None:
        for lin in (self.lin_edge, self.lin_source, self.lin_target, self.lin_out):
            lin.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, edge_projection: Linear | None = None) -> Tensor:
        hidden = linear(edge_attr, *compose(self.lin_edge, edge_projection))
        return F.silu(message_passing.add_node_terms(hidden, self.lin_source(x), self.lin_target(x), edge_index))


class LayerPositionEmbedding(nn.Module):
    """Learned position embeddings of a neural graph's nodes, initialised sinusoidally.

    One row per input neuron, one shared by all neurons of each hidden layer (so hidden neurons stay
    interchangeable) and one per output neuron, from three fixed blocks of one table: a graph of any width
    or depth within the limits finds its rows.

    Shapes:
        - input: a :class:`~lightning_l2o.graphs.NeuralGraph` with ``N`` nodes
        - output: ``(N, C)``
    """

    def __init__(self, channels: int, max_inputs: int, max_hidden_layers: int, max_outputs: int) -> None:
        super().__init__()
        self.max_inputs, self.max_hidden_layers, self.max_outputs = max_inputs, max_hidden_layers, max_outputs
        self.weight = nn.Parameter(torch.empty(max_inputs + max_hidden_layers + max_outputs, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        rows, channels = self.weight.shape
        position = torch.arange(rows, dtype=torch.float)[:, None]
        frequency = torch.exp(-math.log(10000.0) * torch.arange(0, channels, 2, dtype=torch.float) / channels)
        with torch.no_grad():
            self.weight[:, 0::2] = torch.sin(position * frequency)
            self.weight[:, 1::2] = torch.cos(position * frequency)[:, : channels // 2]

    def positions(self, graph: NeuralGraph) -> Tensor:
        """``(N,)`` row of each node: its index among the inputs or outputs, or its hidden layer's row."""
        layout = graph.layer_layout
        hidden = len(layout) - 2
        if layout[0] > self.max_inputs or layout[-1] > self.max_outputs or hidden > self.max_hidden_layers:
            raise ConfigError(
                f"the optimizee has {layout[0]} inputs, {hidden} hidden layers and {layout[-1]} outputs; this GNN's "
                f"position embeddings cover up to max_inputs={self.max_inputs}, max_hidden_layers="
                f"{self.max_hidden_layers}, max_outputs={self.max_outputs} (meta-train one with larger limits)")
        layer, index = graph.node_layer, graph.node_index
        output_rows = self.max_inputs + self.max_hidden_layers + index
        return torch.where(layer == 0, index, torch.where(layer == hidden + 1, output_rows, self.max_inputs + layer - 1))

    def forward(self, graph: NeuralGraph) -> Tensor:
        return self.weight[self.positions(graph)]


class GaussianFourierFeatures(nn.Module):
    """Random Fourier features of a vector: ``[sin(2 pi x B), cos(2 pi x B)]`` with ``B`` drawn once from
    ``N(0, scale^2)`` (Tancik et al. 2020), the input encoding of the reference's NFN and relational transformer.

    ``B`` is a buffer, not a meta-parameter: it is kept in checkpoints and never trained (nor perturbed by PES);
    :meth:`reset_parameters` draws it again.

    Args:
        in_features: size ``F`` of each input vector.
        mapping_size: columns ``M`` of ``B``.
        scale: standard deviation of ``B``'s entries (the reference's: 3).

    Shapes:
        - input: ``(n, F)``
        - output: ``(n, 2 M)``
    """

    def __init__(self, in_features: int, mapping_size: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("frequencies", torch.empty(in_features, mapping_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.frequencies.normal_(0.0, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = (2 * math.pi) * (x @ self.frequencies.to(x.dtype))
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
