"""The relational transformer meta-optimizer on neural graphs (Kofinas et al. 2024's ``rt_noscale``; relational
attention of Diao & Loynd 2023)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import NeuralGraph
from lightning_l2o.meta_optimizers.gnn.base import GraphMetaOptimizer, GraphNetwork, readout, reset_sequential


def _feed_forward(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, 2 * channels, bias=False), nn.GELU(), nn.Linear(2 * channels, channels))


class RelationalAttention(nn.Module):
    """Multi-head self-attention over all nodes of a graph, with the dense edge embeddings in queries, keys and
    values: per head, ``q_ij = Q x_i + Q_e e_ij``, ``k_ij = K x_j + K_e e_ij``, ``v_ij = (V x_j) * M_e e_ij + V_e
    e_ij`` and ``out_i = sum_j softmax_j(q_ij . k_ij / sqrt(d)) v_ij`` (``d``: a head's size).

    Args:
        channels: node and edge embedding size ``C``.
        heads: attention heads; must divide ``channels``.

    Shapes:
        - input: node embeddings ``(N, C)``, edge embeddings ``(N, N, C)`` (``e_ij``: from node ``i`` to ``j``)
        - output: ``(N, C)``
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.node_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.edge_qkvm = nn.Linear(channels, 4 * channels, bias=False)

    def reset_parameters(self) -> None:
        self.node_qkv.reset_parameters()
        self.edge_qkvm.reset_parameters()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        n, channels = x.shape
        head_dim = channels // self.heads
        q_node, k_node, v_node = self.node_qkv(x).view(n, 3, self.heads, head_dim).unbind(1)
        q_edge, k_edge, v_edge, v_scale = self.edge_qkvm(e).view(n, n, 4, self.heads, head_dim).unbind(2)
        queries, keys = q_node[:, None] + q_edge, k_node[None] + k_edge
        values = torch.addcmul(v_edge, v_node[None], v_scale)
        weights = torch.softmax((queries * keys).sum(-1) / math.sqrt(head_dim), dim=1)  # (N, N, heads), over j
        return torch.einsum("ijh,ijhd->ihd", weights, values).reshape(n, channels)


class DenseEdgeUpdate(nn.Module):
    """``h_ij = W_e [e_ij, e_ji] + W_s x_i + W_t x_j + W_r mean_k e_ik + W_c mean_k e_kj``, then ``W_o gelu(h)``:
    each edge from itself, its reverse, both end nodes and the mean edges of its row and column.

    Shapes:
        - input: node embeddings ``(N, C)``, edge embeddings ``(N, N, C)``
        - output: ``(N, N, C)``
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin_edge = nn.Linear(2 * channels, channels)
        self.lin_source = nn.Linear(channels, channels, bias=False)
        self.lin_target = nn.Linear(channels, channels, bias=False)
        self.lin_row = nn.Linear(channels, channels, bias=False)
        self.lin_column = nn.Linear(channels, channels, bias=False)
        self.lin_out = nn.Linear(channels, channels)

    def reset_parameters(self) -> None:
        for lin in (self.lin_edge, self.lin_source, self.lin_target, self.lin_row, self.lin_column, self.lin_out):
            lin.reset_parameters()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        source = self.lin_source(x) + self.lin_row(e.mean(dim=1))  # (N, C): terms of row i
        target = self.lin_target(x) + self.lin_column(e.mean(dim=0))  # (N, C): terms of column j
        hidden = self.lin_edge(torch.cat([e, e.transpose(0, 1)], dim=-1)) + source[:, None] + target[None]
        return self.lin_out(F.gelu(hidden))


class RelationalTransformerLayer(nn.Module):
    """One layer of the relational transformer, post-norm: ``x <- norm(x + lin(attention(x, e)))``, ``x <- norm(x +
    mlp(x))``, then ``e <- norm(e + edge_update(x, e))``, ``e <- norm(e + mlp(e))``.

    Shapes:
        - input: node embeddings ``(N, C)``, edge embeddings ``(N, N, C)``
        - output: the new node ``(N, C)`` and edge ``(N, N, C)`` embeddings
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.attention = RelationalAttention(channels, heads)
        self.attention_out = nn.Linear(channels, channels)
        self.node_mlp, self.edge_mlp = _feed_forward(channels), _feed_forward(channels)
        self.edge_update = DenseEdgeUpdate(channels)
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(4))

    def reset_parameters(self) -> None:
        for module in (self.attention, self.attention_out, self.edge_update, *self.norms):
            module.reset_parameters()
        for mlp in (self.node_mlp, self.edge_mlp):
            reset_sequential(mlp)

    def forward(self, x: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        node_attention, node_mlp, edge_update, edge_mlp = self.norms
        x = node_attention(x + self.attention_out(self.attention(x, e)))
        x = node_mlp(x + self.node_mlp(x))
        e = edge_update(e + self.edge_update(x, e))
        return x, edge_mlp(e + self.edge_mlp(e))


class RelationalTransformerNetwork(GraphNetwork):
    """A transformer over a neural graph's nodes with a dense ``N x N`` edge embedding.

    The input embeddings of :class:`~lightning_l2o.meta_optimizers.gnn.base.GraphNetwork` fill the dense edges: a
    weight's kernel embedding at ``(source, target)``, its reverse embedding at ``(target, source)``, zeros between
    nodes that no weight connects (every node attends to every node). Then ``num_layers``
    :class:`RelationalTransformerLayer` layers and read-out MLPs on the weights' edges and on the nodes.

    Shapes:
        - input: per-parameter features ``(n, F)``, a :class:`~lightning_l2o.graphs.NeuralGraph` with ``E``
          (forward) edges and ``N`` nodes
        - output: forward-edge embeddings ``(E, C)``, node embeddings ``(N, C)`` (and no memory: ``None``)
    """

    def __init__(self, in_features: int, channels: int, num_layers: int, heads: int, **embedding: Any) -> None:
        super().__init__(in_features, channels, **embedding)
        self.layers = nn.ModuleList(RelationalTransformerLayer(channels, heads) for _ in range(num_layers))
        self.edge_out, self.node_out = readout(channels), readout(channels)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        reset_sequential(self.edge_out)
        reset_sequential(self.node_out)

    def forward(self, features: Tensor, graph: NeuralGraph, memory: None = None) -> tuple[Tensor, Tensor, None]:
        edge_in, x = self.embed_inputs(features, graph)
        n, channels = x.shape
        source, target = graph.edge_index
        cells = torch.cat([source * n + target, target * n + source])
        e = x.new_zeros(n * n, channels).index_copy(0, cells, torch.cat(edge_in.chunk(2, dim=-1))).view(n, n, channels)
        for layer in self.layers:
            x, e = layer(x, e)
        return self.edge_out(e[source, target]), self.node_out(x), None


class RelationalTransformerMetaOptimizer(GraphMetaOptimizer):
    """The relational transformer on the optimizee's neural graph; each parameter's update from its edge's (or bias
    node's) embedding, read out per parameter as in :class:`~lightning_l2o.meta_optimizers.gnn.pna.PNAMetaOptimizer`.

    Attention is dense over all ``N`` nodes, so a layer costs ``O(N^2 C^2)``: task 17's graph has 91 nodes, the
    width-128 CNN's 651. Reference setting (Kofinas et al.'s best relational transformer): ``hidden_dim=32,
    num_layers=2, heads=4``. Unlike the reference's, the dense edges also hold each weight's reverse embedding
    (PNA's ``[E, E^T, E + E^T]`` input) and the attention logits are scaled by a head's size.

    Args:
        hidden_dim: node / edge embedding size and the read-out MLP's width.
        num_layers: transformer layers.
        heads: attention heads; must divide ``hidden_dim``.
        options: the arguments of :class:`~lightning_l2o.meta_optimizers.gnn.base.GraphMetaOptimizer` and its base.
    """

    def __init__(self, hidden_dim: int = 32, num_layers: int = 2, heads: int = 4, **options: Any) -> None:
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or hidden_dim % heads:
            raise ConfigError(f"RelationalTransformerMetaOptimizer: heads must be a positive integer that divides "
                              f"hidden_dim={hidden_dim}, got heads={heads!r}; e.g. heads: 4 with hidden_dim: 32")
        super().__init__(hidden_dim=hidden_dim, num_layers=num_layers, heads=heads, **options)

    def build_network(self, in_features: int) -> RelationalTransformerNetwork:
        config = self.config
        return RelationalTransformerNetwork(in_features, config["hidden_dim"], config["num_layers"], config["heads"],
                                            **self.input_embedding_config)

    @property
    def name(self) -> str:
        return "rt"
