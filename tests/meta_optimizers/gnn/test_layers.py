"""The GNN layers: a projection of the edge embeddings folded into its consumers equals applying it first."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_geometric.nn.dense.linear import Linear

from lightning_l2o.meta_optimizers.gnn import EdgeUpdate, FiLMPNAConv, degree_histogram
from lightning_l2o.meta_optimizers.gnn.layers import compose


def test_compose_equals_applying_both_layers():
    torch.manual_seed(0)
    outer, inner = Linear(8, 6), Linear(5, 8)
    h = torch.randn(4, 5)
    torch.testing.assert_close(F.linear(h, *compose(outer, inner)), outer(inner(h)))
    weight, bias = compose(outer, None)
    assert weight is outer.weight and bias is outer.bias


def test_conv_and_edge_update_fold_the_projection_of_their_edge_inputs():
    torch.manual_seed(0)
    channels, num_nodes = 8, 7
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 0], [3, 3, 4, 5, 6, 0, 1, 6]])
    x, hidden = torch.randn(num_nodes, channels), torch.randn(edge_index.shape[1], channels)
    update = EdgeUpdate(channels)
    projected = update.lin_out(hidden)
    conv = FiLMPNAConv(channels, ["mean", "max"], ["identity", "amplification"], degree_histogram([2, 3, 2]))
    torch.testing.assert_close(conv(x, edge_index, hidden, update.lin_out), conv(x, edge_index, projected))
    torch.testing.assert_close(update(x, edge_index, hidden, update.lin_out), update(x, edge_index, projected))
    assert not torch.allclose(conv(x, edge_index, hidden), conv(x, edge_index, projected))
