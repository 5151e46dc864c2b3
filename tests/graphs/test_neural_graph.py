"""Neural graphs: node and edge counts, where every kernel element and bias lands, the round trip, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import NeuralGraph
from lightning_l2o.params import ParamLayout, ParamSpace


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4),
    )


def test_cnn_graph_counts_nodes_and_edges_per_layer():
    graph = NeuralGraph.from_module(small_cnn())
    assert graph.layer_layout == (1, 2, 3, 4)
    assert graph.num_nodes == 10 and graph.num_edges == 1 * 2 + 2 * 3 + 3 * 4
    assert graph.node_layer.tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    src, dst = graph.edge_index
    assert (graph.node_layer[dst] == graph.node_layer[src] + 1).all()


def test_each_layers_edges_view_as_its_weight_matrix():
    graph = NeuralGraph.from_module(small_cnn())
    layout, start = graph.layer_layout, torch.tensor([0, *graph.layer_layout]).cumsum(0)
    blocks = graph.edge_index.split([a * b for a, b in itertools.pairwise(layout)], dim=1)
    for layer, (src, dst) in enumerate(blocks):
        rows, cols = torch.meshgrid(torch.arange(layout[layer + 1]), torch.arange(layout[layer]), indexing="ij")
        assert torch.equal(src, start[layer] + cols.flatten()) and torch.equal(dst, start[layer + 1] + rows.flatten())


def test_bidirectional_edges_are_sorted_by_target_with_their_pointer_and_forward_rows():
    graph = NeuralGraph.from_module(small_cnn())
    both, ptr = graph.bidirectional_edge_index, graph.bidirectional_ptr
    assert both.shape == (2, 2 * graph.num_edges)
    assert (both[1].diff() >= 0).all()
    assert torch.equal(ptr.diff(), torch.bincount(both[1], minlength=graph.num_nodes))
    assert torch.equal(both[:, graph.forward_edge_rows], graph.edge_index)
    reverse_rows = torch.ones(both.shape[1], dtype=torch.bool)
    reverse_rows[graph.forward_edge_rows] = False
    assert sorted(map(tuple, both[:, reverse_rows].T.tolist())) == sorted(map(tuple, graph.edge_index.flip(0).T.tolist()))
    forward_then_reverse = torch.cat([graph.edge_index, graph.edge_index.flip(0)], dim=1)
    assert torch.equal(forward_then_reverse[:, graph.bidirectional_order], both)


def test_every_kernel_element_and_bias_lands_in_its_slot():
    model = small_cnn()
    graph = NeuralGraph.from_module(model)
    n = sum(p.numel() for p in model.parameters())
    flat = torch.arange(1.0, n + 1)  # each parameter's value is its position + 1
    params = ParamLayout.from_tensors(model.named_parameters()).unflatten(flat)
    edge_features, node_features = graph.to_graph(flat[:, None])
    kernels = edge_features.view(graph.num_edges, 5, 5)
    src, dst = graph.edge_index
    # second conv: weight[j, i] (3x3) centred in 5x5 on the edge from node 1 + i to node 3 + j
    w = params["2.weight"]
    for j in range(3):
        for i in range(2):
            edge = int(((src == 1 + i) & (dst == 3 + j)).nonzero())
            torch.testing.assert_close(kernels[edge, 1:4, 1:4], w[j, i])
            assert kernels[edge].sum() == w[j, i].sum()  # nothing outside the centre
    # linear: weight[k, c] at the centre slot of the edge from node 3 + c to node 6 + k
    lin = params["7.weight"]
    edge = int(((src == 3 + 2) & (dst == 6 + 1)).nonzero())
    assert kernels[edge, 2, 2] == lin[1, 2] and kernels[edge].sum() == lin[1, 2]
    # biases are node features; the input node has none
    torch.testing.assert_close(node_features[1:3, 0], params["0.bias"])
    torch.testing.assert_close(node_features[6:10, 0], params["7.bias"])
    assert node_features[0, 0] == 0


def test_round_trip_back_to_parameter_shapes():
    model = small_cnn()
    graph = NeuralGraph.from_module(model)
    values = torch.randn(sum(p.numel() for p in model.parameters()), 3)
    edge_features, node_features = graph.to_graph(values)
    table = torch.cat([edge_features.view(-1, 3), node_features])
    torch.testing.assert_close(table[graph.param_slot], values)
    edge_ids = torch.arange(graph.num_edges, dtype=torch.float)[:, None]
    node_ids = -torch.arange(graph.num_nodes, dtype=torch.float)[:, None]
    owners = graph.to_params(edge_ids, node_ids)[:, 0]
    layout = ParamLayout.from_tensors(model.named_parameters())
    per_tensor = layout.unflatten(owners)
    assert per_tensor["0.weight"].flatten().tolist() == [0] * 9 + [1] * 9  # one edge per 3x3 kernel
    assert per_tensor["7.bias"].tolist() == [-6, -7, -8, -9]


def test_mlp_in_nested_sequential_on_flattened_images():
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Dropout(0.1)), nn.Linear(5, 3))
    graph = NeuralGraph.from_module(model)
    assert graph.layer_layout == (6, 5, 3) and graph.num_edges == 6 * 5 + 5 * 3 and graph.num_nodes == 14
    assert graph.param_slot.unique().numel() == sum(p.numel() for p in model.parameters())


def test_graphs_batch_with_torch_geometric():
    a, b = NeuralGraph.from_module(small_cnn()), NeuralGraph.from_module(nn.Linear(4, 2))
    batch = Batch.from_data_list([a.data, b.data])
    assert batch.num_nodes == a.num_nodes + b.num_nodes
    assert int(batch.edge_index.max()) == a.num_nodes + b.num_nodes - 1


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize(("model", "named"), [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten()), "'1' (BatchNorm2d)"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), Residual()), "'1' (Residual)"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), "'1' (Flatten)"),
    (nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 1)), "'1' (MultiheadAttention)"),
    (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "'1' (LayerNorm)"),
    (nn.Sequential(nn.Conv2d(1, 2, 7)), "'0' (Conv2d) has a (7, 7) kernel"),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(2, 1)), "'1' (Linear) takes 2 inputs"),
])
def test_unsupported_modules_are_named_with_what_is_supported(model, named):
    with pytest.raises(ConfigError, match="neural graph") as err:
        NeuralGraph.from_module(model)
    assert named in str(err.value)


def test_param_space_is_built_once_per_architecture_and_the_graph_once_per_space(monkeypatch):
    calls = []
    original = NeuralGraph.from_module.__func__
    monkeypatch.setattr(NeuralGraph, "from_module", classmethod(lambda cls, *a, **k: calls.append(1) or original(cls, *a, **k)))
    first = ParamSpace.of_module(nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2)))
    second = ParamSpace.of_module(nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2)))
    other = ParamSpace.of_module(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)))
    assert first is second and first is not other
    assert first.graph is second.graph and first.graph.layer_layout == (3, 7, 2)
    assert len(calls) == 1


def test_param_space_of_bare_parameters_has_no_graph_and_says_to_pass_the_module():
    space = ParamSpace.of_layout(ParamLayout(("0",), (torch.Size([3]),)))
    assert space.graph is None
    with pytest.raises(ConfigError, match="pass the model itself"):
        space.require_graph("PNA")
