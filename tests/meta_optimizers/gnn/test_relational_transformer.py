"""The relational transformer: its attention against a pair-by-pair computation, the dense edges it starts from,
equivariance at the reference size, and its argument check."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_l2o import RelationalTransformerMetaOptimizer
from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import NeuralGraph
from lightning_l2o.meta_optimizers.gnn import RelationalAttention
from tests.meta_optimizers.gnn.test_base import EQUIVARIANCE_CASES, flat, mlp, permutation_error


def test_relational_attention_equals_the_pair_by_pair_formula():
    torch.manual_seed(0)
    n, channels, heads = 5, 6, 2
    attention = RelationalAttention(channels, heads)
    x, e = torch.randn(n, channels), torch.randn(n, n, channels)
    d = channels // heads
    q_w, k_w, v_w = attention.node_qkv.weight.view(3, heads, d, channels)
    qe_w, ke_w, ve_w, m_w = attention.edge_qkvm.weight.view(4, heads, d, channels)
    expected = torch.zeros(n, heads, d)
    for h in range(heads):
        for i in range(n):
            logits = torch.stack([(q_w[h] @ x[i] + qe_w[h] @ e[i, j]) @ (k_w[h] @ x[j] + ke_w[h] @ e[i, j])
                                  for j in range(n)]) / math.sqrt(d)
            values = torch.stack([(v_w[h] @ x[j]) * (m_w[h] @ e[i, j]) + ve_w[h] @ e[i, j] for j in range(n)])
            expected[i, h] = torch.softmax(logits, 0) @ values
    torch.testing.assert_close(attention(x, e), expected.reshape(n, channels), rtol=1e-5, atol=1e-6)


def test_the_dense_edges_hold_each_weight_forward_and_reversed_and_zeros_elsewhere(monkeypatch):
    model = mlp()
    graph = NeuralGraph.from_module(model)
    rule = RelationalTransformerMetaOptimizer(hidden_dim=8, num_layers=1, heads=2)
    seen = {}
    layer = rule.network.layers[0]
    monkeypatch.setattr(layer, "forward", lambda x, e: seen.setdefault("e", e) is not None and (x, e))
    features = torch.randn(len(flat(model)), rule.features.num_features)
    rule.network(features, graph)
    edge_in, _ = rule.network.embed_inputs(features, graph)
    forward, reverse = edge_in.chunk(2, dim=-1)
    source, target = graph.edge_index
    dense = seen["e"]
    torch.testing.assert_close(dense[source, target], forward)
    torch.testing.assert_close(dense[target, source], reverse)
    connected = torch.zeros(graph.num_nodes, graph.num_nodes, dtype=torch.bool)
    connected[source, target] = connected[target, source] = True
    assert not dense[~connected].any()


@pytest.mark.parametrize(("make_model", "pairs"), EQUIVARIANCE_CASES)
def test_the_reference_size_relational_transformer_is_equivariant(make_model, pairs):
    torch.manual_seed(0)
    assert permutation_error(RelationalTransformerMetaOptimizer(), make_model(), pairs) < 1e-5


@pytest.mark.parametrize("heads", [0, 3, 2.0, True])
def test_heads_that_do_not_divide_the_hidden_size_are_named(heads):
    with pytest.raises(ConfigError, match="heads must be a positive integer that divides hidden_dim=32"):
        RelationalTransformerMetaOptimizer(hidden_dim=32, heads=heads)
