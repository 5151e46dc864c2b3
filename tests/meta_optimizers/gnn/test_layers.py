"""The GNN layers: a projection of the edge embeddings folded into its consumers equals applying it first; max / min
by segment over target-sorted edges equal torch_geometric's scatter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn.dense.linear import Linear

from lightning_l2o.compiled_kernels import fused_kernels
from lightning_l2o.meta_optimizers.gnn import EdgeUpdate, FiLMPNAConv, GaussianFourierFeatures, degree_histogram
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


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled kernel", "eager"])
def test_conv_on_target_sorted_edges_with_their_pointer_equals_scatter_in_value_and_gradient(compiled):
    torch.manual_seed(0)
    channels, num_nodes, num_edges = 8, 9, 40
    edge_index = torch.randint(0, num_nodes, (2, num_edges))
    edge_index[1, :num_nodes] = torch.arange(num_nodes)  # every node receives a message
    order = edge_index[1].argsort(stable=True)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(edge_index[1], minlength=num_nodes).cumsum(0)])
    conv = FiLMPNAConv(channels, ["mean", "min", "max", "std"], ["identity", "amplification"],
                       degree_histogram([2, 3, 2]))
    x, edge_attr = torch.randn(num_nodes, channels), torch.randn(num_edges, channels)

    def value_and_gradients(sorted_by_target: bool) -> list[torch.Tensor]:
        conv.zero_grad()
        inputs = x.clone().requires_grad_(), edge_attr.clone().requires_grad_()
        if sorted_by_target:
            out = conv(inputs[0], edge_index[:, order], inputs[1][order], target_ptr=ptr)
        else:
            out = conv(inputs[0], edge_index, inputs[1])
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [out.detach(), *(t.grad for t in inputs), *(p.grad.clone() for p in conv.parameters())]

    with fused_kernels(compiled):
        by_pointer = value_and_gradients(True)
    for by_segment, by_scatter in zip(by_pointer, value_and_gradients(False), strict=True):
        torch.testing.assert_close(by_segment, by_scatter)
    moved = ptr.clone()
    moved[1:-1] += 1  # segments one edge off: with a gradient to compute, the aggregation reads the pointer
    sorted_inputs = x.requires_grad_(), edge_index[:, order], edge_attr[order]
    with fused_kernels(compiled):
        assert not torch.allclose(conv(*sorted_inputs, target_ptr=moved), conv(*sorted_inputs, target_ptr=ptr))
    with torch.no_grad(), fused_kernels(False):  # the eager path without one (a deployed step) runs by scatter
        torch.testing.assert_close(conv(*sorted_inputs, target_ptr=moved), conv(*sorted_inputs, target_ptr=ptr))


def test_gaussian_fourier_features_are_sines_and_cosines_of_a_fixed_projection():
    torch.manual_seed(0)
    encode = GaussianFourierFeatures(in_features=5, mapping_size=7, scale=3.0)
    x = torch.randn(4, 5)
    angles = 2 * torch.pi * x @ encode.frequencies
    torch.testing.assert_close(encode(x), torch.cat([angles.sin(), angles.cos()], dim=1))
    assert encode(x).shape == (4, 14) and not list(encode.parameters())
    torch.testing.assert_close(encode(torch.zeros(1, 5)), torch.cat([torch.zeros(1, 7), torch.ones(1, 7)], dim=1))
    drawn = encode.frequencies.clone()
    encode.reset_parameters()
    assert not torch.equal(encode.frequencies, drawn)
