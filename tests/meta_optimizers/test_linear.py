"""The oneDNN dense layer: equal to ``F.linear`` (+ ReLU) in value and every gradient, and ``F.linear`` elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_l2o.meta_optimizers.linear import ONEDNN_AVAILABLE, linear, onednn, uses_onednn

needs_onednn = pytest.mark.skipif(not ONEDNN_AVAILABLE, reason="this PyTorch build has no oneDNN linear kernel")


def values_and_gradients(fn, x, weight, bias):
    inputs = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = fn(*inputs)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [out.detach()] + [t.grad for t in inputs if t is not None]


@needs_onednn
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_onednn_linear_equals_f_linear_in_value_and_gradients(relu, with_bias):
    torch.manual_seed(0)
    x = torch.randn(300, 24)
    weight = torch.randn(16, 40)[:, 8:32]  # a column slice, as the read-out's first layer takes it
    bias = torch.randn(16) if with_bias else None
    assert uses_onednn(x) and not weight.is_contiguous()

    def reference(x, weight, bias):
        out = F.linear(x, weight, bias)
        return F.relu(out) if relu else out

    ours = values_and_gradients(lambda *a: linear(*a, relu=relu), x, weight, bias)
    for got, expected in zip(ours, values_and_gradients(reference, x, weight, bias), strict=True):
        torch.testing.assert_close(got, expected)


@needs_onednn
@pytest.mark.parametrize("case", ["no_grad", "no input requires grad", "only the bias requires grad"])
def test_onednn_linear_records_a_graph_only_where_a_gradient_flows(case):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(50, 6), torch.randn(5, 9)[:, 2:8], torch.randn(5)
    bias.requires_grad_(case == "only the bias requires grad")
    with torch.set_grad_enabled(case != "no_grad"):
        out = linear(x, weight, bias, relu=True)
    assert (out.grad_fn is not None) == (case == "only the bias requires grad")
    torch.testing.assert_close(out, F.relu(F.linear(x, weight, bias)))


@needs_onednn
def test_second_derivatives_through_the_onednn_linear_equal_f_linears():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(6, 3), torch.randn(4, 3), torch.randn(4)

    def gradient_of_gradient_norm(fn):
        inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
        grads = torch.autograd.grad(fn(*inputs).square().sum(), inputs, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), inputs)

    ours = gradient_of_gradient_norm(lambda *a: linear(*a, relu=True))
    for got, expected in zip(ours, gradient_of_gradient_norm(lambda *a: F.relu(F.linear(*a))), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("case", ["float64", "bfloat16 autocast", "empty", "oneDNN switched off"])
def test_f_linear_runs_where_onednn_does_not(case):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(7, 4), torch.randn(3, 4), torch.randn(3)
    if case == "float64":
        x, weight, bias = x.double(), weight.double(), bias.double()
    if case == "empty":
        x = x[:0]
    with torch.autocast("cpu", torch.bfloat16, enabled=case == "bfloat16 autocast"), \
            onednn(case != "oneDNN switched off"):
        assert not uses_onednn(x)
        out = linear(x, weight, bias, relu=True)
        torch.testing.assert_close(out, F.relu(F.linear(x, weight, bias)))
    assert out.dtype == (torch.bfloat16 if case == "bfloat16 autocast" else x.dtype)
