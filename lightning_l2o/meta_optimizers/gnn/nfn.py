"""The NFN meta-optimizer (neural functional network of Zhou et al. 2023, NP layers; Kofinas et al. 2024's ``nfn``
baseline) on neural graphs of one fixed depth."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import NeuralGraph
from lightning_l2o.meta_optimizers.gnn.base import GraphMetaOptimizer, GraphNetwork
from lightning_l2o.params import ParamSpace

TASK_17_DEPTH = 4  # conv, conv, conv, linear


def check_depth(depth: int, graph: NeuralGraph) -> None:
    """Refuse, with the fix, an optimizee whose number of weight layers is not ``depth``."""
    optimizee_depth = len(graph.layer_layout) - 1
    if optimizee_depth != depth:
        raise ConfigError(f"NFNMetaOptimizer: its NP layers are for optimizees of {depth} weight layers "
                          f"(optimizee_depth={depth}), "
                          f"but this optimizee has {optimizee_depth} (layer widths {list(graph.layer_layout)}); an "
                          f"NFN's weights are per layer, so it cannot update another depth: meta-train one with "
                          f"optimizee_depth: {optimizee_depth}, or use PNA or the relational transformer, which run on "
                          f"any depth")


class NPLinear(nn.Module):
    """One NP layer: a linear map of a neural graph's edge and node embeddings that is equivariant to permuting the
    neurons of any layer, with separate weights for each of the optimizee's ``depth`` weight layers.

    Each node ``v`` has the context ``c_v = [mean of its incoming edges, x_v, mean of its outgoing edges]`` (zeros
    where it has none), and the graph the global ``g = [mean edge of each weight layer, mean node of each node
    layer]`` (``(2 depth + 1) C``). For an edge ``u -> v`` of weight layer ``i`` (``v`` in node layer ``i + 1``):

        e'_uv = A_i e_uv + B_i g + S_i c_u + T_i c_v,        x'_v = D_i c_v + G_i g

    Input nodes, which hold no parameter (the reference has no features for them), pass through unchanged: their
    embedding, the position of each input, is read by the edges of weight layer 0.

    Zhou et al.'s NP layer (row, column and global means of each weight matrix and bias), with a kernel's elements as
    channels of its edge and input neurons as nodes with embeddings too. Each output's weights start uniform in
    ``+-1 / sqrt(its total fan-in)``, the reference's init.

    Args:
        channels: edge and node embedding size ``C``.
        depth: the optimizee's weight layers ``L`` (``L + 1`` node layers).

    Shapes:
        - input: edge embeddings ``(E, C)``, node embeddings ``(N, C)``, a
          :class:`~lightning_l2o.graphs.NeuralGraph` of ``depth`` weight layers (checked once per step by
          :class:`NFNNetwork`)
        - output: edge ``(E, C)`` and node ``(N, C)`` embeddings
    """

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        global_channels = (2 * depth + 1) * channels

        def linears(count: int, in_channels: int, bias: bool = False) -> nn.ModuleList:
            return nn.ModuleList(nn.Linear(in_channels, channels, bias=bias) for _ in range(count))

        self.edge_self, self.edge_global = linears(depth, channels, bias=True), linears(depth, global_channels)
        self.edge_source, self.edge_target = linears(depth, 3 * channels), linears(depth, 3 * channels)
        self.node_self, self.node_global = linears(depth, 3 * channels, bias=True), linears(depth, global_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        terms = [*zip(self.edge_self, self.edge_global, self.edge_source, self.edge_target, strict=True),
                 *zip(self.node_self, self.node_global, strict=True)]
        for output in terms:
            bound = 1 / math.sqrt(sum(lin.in_features for lin in output))
            for lin in output:
                for weight in lin.parameters():
                    nn.init.uniform_(weight, -bound, bound)

    def forward(self, edges: Tensor, nodes: Tensor, graph: NeuralGraph) -> tuple[Tensor, Tensor]:
        layout = graph.layer_layout
        matrices = [block.view(n_out, n_in, -1) for block, (n_in, n_out) in zip(
            edges.split([a * b for a, b in itertools.pairwise(layout)]), itertools.pairwise(layout), strict=True)]
        no_edges = nodes.new_zeros(layout[0], nodes.shape[1]), nodes.new_zeros(layout[-1], nodes.shape[1])
        incoming = torch.cat([no_edges[0], *(w.mean(1) for w in matrices)])
        outgoing = torch.cat([*(w.mean(0) for w in matrices), no_edges[1]])
        contexts = torch.cat([incoming, nodes, outgoing], dim=-1).split(list(layout))
        node_layers = nodes.split(list(layout))
        means = torch.cat([*(w.mean((0, 1)) for w in matrices), *(x.mean(0) for x in node_layers)])
        new_edges = [
            self.edge_self[i](w) + self.edge_global[i](means) + self.edge_source[i](contexts[i])
            + self.edge_target[i](contexts[i + 1])[:, None] for i, w in enumerate(matrices)]
        new_nodes = [self.node_self[i](c) + self.node_global[i](means) for i, c in enumerate(contexts[1:])]
        return torch.cat([w.flatten(0, 1) for w in new_edges]), torch.cat([node_layers[0], *new_nodes])


class NFNNetwork(GraphNetwork):
    """NFN over a neural graph of fixed depth: the input embeddings of
    :class:`~lightning_l2o.meta_optimizers.gnn.base.GraphNetwork` (forward edges only, with the layer position
    embeddings on nodes, which break the input and output neurons' symmetry as the reference's IO encoding does),
    then ``num_layers`` :class:`NPLinear` layers with a ReLU between them.

    Shapes:
        - input: per-parameter features ``(n, F)``, a :class:`~lightning_l2o.graphs.NeuralGraph` with ``E``
          (forward) edges, ``N`` nodes and ``depth`` weight layers
        - output: edge embeddings ``(E, C)``, node embeddings ``(N, C)`` (and no memory: ``None``)
    """

    edge_directions = 1

    def __init__(self, in_features: int, channels: int, num_layers: int, depth: int, **embedding: Any) -> None:
        super().__init__(in_features, channels, **embedding)
        self.layers = nn.ModuleList(NPLinear(channels, depth) for _ in range(num_layers))
        self.act = nn.ReLU()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, features: Tensor, graph: NeuralGraph, memory: None = None) -> tuple[Tensor, Tensor, None]:
        check_depth(self.layers[0].depth, graph)
        edges, nodes = self.embed_inputs(features, graph)
        for i, layer in enumerate(self.layers):
            if i:
                edges, nodes = self.act(edges), self.act(nodes)
            edges, nodes = layer(edges, nodes, graph)
        return edges, nodes, None


class NFNMetaOptimizer(GraphMetaOptimizer):
    """NFN on the optimizee's neural graph; each parameter's update from its edge's (or bias node's) embedding, read
    out per parameter as in :class:`~lightning_l2o.meta_optimizers.gnn.pna.PNAMetaOptimizer`.

    The NP layers keep weights per layer of the optimizee, so one NFN updates optimizees of ``optimizee_depth``
    weight layers only (any widths, kernels and datasets): any other depth is refused with a
    :class:`~lightning_l2o.errors.ConfigError`. That is the NFN's limit that Kofinas et al.'s GNNs lift. Reference
    setting (the seed's ``nfn`` with ``--hid 32 --layers 2``, which builds 3 NP layers): ``hidden_dim=32,
    num_layers=3``; unlike the reference, the input goes through a linear embedding with layer positions instead of
    Gaussian Fourier features with a sinusoidal IO encoding.

    Args:
        hidden_dim: edge / node embedding size and the read-out MLP's width.
        num_layers: NP layers.
        optimizee_depth: weight layers (``Linear`` / ``Conv2d``) of the optimizees (task 17's CNN: 4).
        options: the arguments of :class:`~lightning_l2o.meta_optimizers.gnn.base.GraphMetaOptimizer` and its base.
    """

    def __init__(self, hidden_dim: int = 32, num_layers: int = 3, optimizee_depth: int = TASK_17_DEPTH,
                 **options: Any) -> None:
        if isinstance(optimizee_depth, bool) or not isinstance(optimizee_depth, int) or optimizee_depth < 1:
            raise ConfigError(f"NFNMetaOptimizer: optimizee_depth must be a positive integer (the optimizees' number "
                              f"of Linear / Conv2d layers), got {optimizee_depth!r}; e.g. 4 for task 17's CNN")
        super().__init__(hidden_dim=hidden_dim, num_layers=num_layers, optimizee_depth=optimizee_depth, **options)

    def check_space(self, space: ParamSpace) -> None:
        """A neural graph of :attr:`optimizee_depth` weight layers."""
        check_depth(self.config["optimizee_depth"], space.require_graph(type(self).__name__))

    def build_network(self, in_features: int) -> NFNNetwork:
        config = self.config
        return NFNNetwork(in_features, config["hidden_dim"], config["num_layers"], config["optimizee_depth"],
                          **self.input_embedding_config)

    @property
    def name(self) -> str:
        return "nfn"
