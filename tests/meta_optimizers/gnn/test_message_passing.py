"""The compiled message-passing kernels: bit for bit the eager layers' values, their gradients to float rounding
(ties, NaN and nodes without messages included), used wherever they apply and nowhere else."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_l2o import PNAMetaOptimizer
from lightning_l2o.compiled_kernels import fused_kernels
from lightning_l2o.meta_optimizers.gnn import EdgeUpdate, FiLMPNAConv, degree_histogram, message_passing
from lightning_l2o.params import ParamLayout, ParamSpace
from lightning_l2o.tasks.classifier import ConvNet

pytestmark = pytest.mark.skipif(message_passing.library() is None,
                                reason="the compiled kernel cannot be built here (see the warning: no C compiler?)")


def sorted_graph(num_nodes: int = 9, num_edges: int = 40, empty: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """Random edges sorted by target, with their CSR pointer; the nodes in ``empty`` receive no message."""
    torch.manual_seed(0)
    receivers = torch.tensor([i for i in range(num_nodes) if i not in empty])
    target = torch.cat([receivers, receivers[torch.randint(0, len(receivers), (num_edges - len(receivers),))]])
    edge_index = torch.stack([torch.randint(0, num_nodes, (num_edges,)), target])[:, target.argsort(stable=True)]
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.bincount(edge_index[1], minlength=num_nodes).cumsum(0)])
    return edge_index, ptr


def conv_outputs(conv: FiLMPNAConv, compiled: bool, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                 ptr: Tensor | None) -> list[Tensor]:
    """The layer's output and the gradients of a weighted sum of it for its inputs and parameters."""
    conv.zero_grad()
    inputs = x.clone().requires_grad_(), edge_attr.clone().requires_grad_()
    with fused_kernels(compiled):
        out = conv(inputs[0], edge_index, inputs[1], target_ptr=ptr)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach(), *(t.grad for t in inputs), *(p.grad.clone() for p in conv.parameters())]


def small_conv(channels: int = 8, aggregators=("mean", "min", "max", "std"), scalers=("identity", "amplification"),
               ) -> FiLMPNAConv:
    torch.manual_seed(1)
    return FiLMPNAConv(channels, list(aggregators), list(scalers), degree_histogram([2, 3, 2]))


@pytest.mark.parametrize("aggregators", [("mean", "min", "max", "std"), ("std", "max"), ("min",)])
def test_values_are_bit_for_bit_the_eager_layer_s_and_gradients_agree(aggregators):
    edge_index, ptr = sorted_graph(empty=(2, 5))
    conv = small_conv(aggregators=aggregators)
    x, edge_attr = torch.randn(9, 8), torch.randn(40, 8)
    compiled, eager = (conv_outputs(conv, flag, x, edge_index, edge_attr, ptr) for flag in (True, False))
    assert torch.equal(compiled[0], eager[0])
    for a, b in zip(compiled[1:], eager[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        with fused_kernels(True):
            without_gradient = conv(x, edge_index, edge_attr, target_ptr=ptr)
        assert torch.equal(without_gradient, eager[0])


def test_tied_maxima_and_minima_share_the_gradient_as_scatter_reduce_does():
    edge_index, ptr = sorted_graph()
    assert len(set(map(tuple, edge_index.t().tolist()))) < edge_index.shape[1]  # duplicate edges, whose messages tie below
    conv = small_conv()
    with torch.no_grad():
        conv.film.weight.zero_()  # a message depends on its edge only through the nodes it joins
    x, edge_attr = torch.randn(9, 8), torch.randn(40, 8)
    compiled = conv_outputs(conv, True, x, edge_index, edge_attr, ptr)
    by_scatter = conv_outputs(conv, False, x, edge_index, edge_attr, None)  # torch's scatter_reduce splits ties evenly
    for a, b in zip(compiled, by_scatter, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_nan_propagates_as_in_the_eager_layer():
    edge_index, ptr = sorted_graph()
    conv = small_conv()
    x, edge_attr = torch.randn(9, 8), torch.randn(40, 8)
    edge_attr[7, 3] = float("nan")
    with torch.no_grad():
        outputs = []
        for compiled in (True, False):
            with fused_kernels(compiled):
                outputs.append(conv(x, edge_index, edge_attr, target_ptr=ptr))
    assert outputs[0].isnan().any()
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0, equal_nan=True)


def test_the_kernel_runs_where_it_applies_and_the_eager_path_elsewhere(monkeypatch):
    calls = []
    kernel = message_passing.film_aggregate
    monkeypatch.setattr(message_passing, "film_aggregate", lambda *args: calls.append(1) or kernel(*args))
    edge_index, ptr = sorted_graph()
    x, edge_attr = torch.randn(9, 8), torch.randn(40, 8)
    small_conv()(x, edge_index, edge_attr, target_ptr=ptr)
    assert len(calls) == 1
    small_conv()(x, edge_index, edge_attr)  # no pointer: edges in any order
    small_conv(aggregators=("mean", "sum"))(x, edge_index, edge_attr, target_ptr=ptr)
    small_conv(scalers=("identity", "linear"))(x, edge_index, edge_attr, target_ptr=ptr)
    with fused_kernels(False):
        small_conv()(x, edge_index, edge_attr, target_ptr=ptr)
    assert len(calls) == 1


def test_inconsistent_pointers_are_refused_before_the_kernel_reads_them():
    edge_index, ptr = sorted_graph()
    conv = small_conv()
    x, edge_attr = torch.randn(9, 8), torch.randn(40, 8)
    for bad_ptr in (ptr[:-1], torch.cat([ptr[:-1], ptr[-1:] + 1]), ptr.flip(0)):
        with pytest.raises(ValueError, match="target_ptr"):
            conv(x, edge_index, edge_attr, target_ptr=bad_ptr)
    with pytest.raises(ValueError, match="source node"):
        conv(x, edge_index + 1, edge_attr, target_ptr=ptr)


def test_pna_on_a_cnn_s_graph_gives_the_eager_update_bit_for_bit():
    model = ConvNet(1, [4, 6], [1, 1], num_classes=3)
    space = ParamSpace.of_module(model)
    params = ParamLayout.flatten([p.detach() for p in model.parameters()])
    rule = PNAMetaOptimizer(hidden_dim=16, num_layers=3)
    grads = torch.randn_like(params)
    updates = []
    for compiled in (True, False):
        with fused_kernels(compiled):
            state = rule.init_state(params, space)
            new_params, _, _ = rule(params, grads, torch.tensor(1.0), state, space, 0.01)
        updates.append(new_params)
        rule.zero_grad()
        new_params.square().sum().backward()
        updates.append(torch.cat([p.grad.flatten() for p in rule.parameters() if p.grad is not None]))
    assert torch.equal(updates[0].detach(), updates[2].detach())
    torch.testing.assert_close(updates[1], updates[3], rtol=1e-4, atol=1e-6)


def test_an_edge_update_s_node_terms_are_the_eager_sum_bit_for_bit_with_its_gradients():
    edge_index, _ = sorted_graph()
    torch.manual_seed(2)
    update = EdgeUpdate(8)
    x, edge_attr = torch.randn(9, 8), torch.randn(40, 8)
    results = []
    for compiled in (True, False):
        update.zero_grad()
        inputs = x.clone().requires_grad_(), edge_attr.clone().requires_grad_()
        with fused_kernels(compiled):
            out = update(*inputs[:1], edge_index, inputs[1])
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), *(t.grad for t in inputs), *(p.grad.clone() for p in update.parameters()
                                                                    if p.grad is not None)])
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1:], results[1][1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_node_terms_of_nodes_that_do_not_exist_are_refused():
    edge, terms = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="edge_index must join the 5 nodes"):
        message_passing.add_node_terms(edge, terms, terms, torch.tensor([[0, 1, 5], [1, 2, 3]]))
