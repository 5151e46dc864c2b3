"""Dense layers of the learned optimizers, through oneDNN on the CPU.

The per-parameter networks and the GNN's edge products are tall, narrow products (``(n, 64) @ (64, 64)`` for
``n`` up to millions of coordinates). On this project's AMD EPYC machine, PyTorch's CPU ``mm`` (MKL) reaches
about half the rate of oneDNN's JIT-compiled kernels on such products (``benchmarks/linear_kernels.py``), and
``addmm`` writes its bias broadcast and the ReLU makes another pass over each activation. :func:`linear` runs
the product through oneDNN (``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile`` uses for
frozen CPU linears) with the bias and an optional ReLU fused into it, forward and for the input's gradient;
everywhere else (CUDA, other dtypes, under autocast, or a PyTorch without oneDNN) it is ``F.linear`` (+ ``relu``).
One difference in value: oneDNN's fused ReLU is ``max(x, 0)``, which turns a NaN into 0 where ``F.relu`` keeps it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx

from lightning_l2o.switch import Switch

ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
onednn = Switch(True, available=ONEDNN_AVAILABLE)
"""Whether :func:`linear` may use oneDNN; ``with onednn(False):`` turns it off within a block, for comparisons and for
``torch.utils.flop_counter``, which does not count oneDNN's kernel."""


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    """``x @ weight.T + bias`` (then ReLU) in one oneDNN call."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``relu?(x @ weight.T + bias)`` with oneDNN's product forward and for the input's gradient (the weight's
    gradient, a ``(out, n) @ (n, in)`` product, is faster by ``torch.mm``); a backward that builds a graph
    (``create_graph=True``) runs differentiable ``aten`` products only, so higher derivatives stay exact."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        x, weight = x.contiguous(), weight.contiguous()
        out = _onednn(x, weight, bias, relu)
        ctx.save_for_backward(x, weight, out if relu else None)
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight, out = ctx.saved_tensors  # type: ignore[attr-defined]
        grad = torch.ops.aten.threshold_backward(grad, out, 0) if out is not None else grad.contiguous()
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_x = None
        if needs[0]:
            grad_x = grad @ weight if torch.is_grad_enabled() else _onednn(grad, weight.t().contiguous(), None, False)
        grad_weight = grad.t() @ x if needs[1] else None  # torch.mm: faster than oneDNN for this transposed product
        grad_bias = grad.sum(0) if ctx.has_bias and needs[2] else None  # type: ignore[attr-defined]
        return grad_x, grad_weight, grad_bias, None


def uses_onednn(x: Tensor) -> bool:
    """Whether :func:`linear` runs ``x`` through oneDNN: 2-D, non-empty, float32 on the CPU, outside autocast."""
    return (bool(onednn) and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 and x.shape[0] > 0
            and not torch.is_autocast_enabled("cpu"))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, relu: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)``, then ReLU if ``relu``; through oneDNN where :func:`uses_onednn`.

    Shapes:
        - input: ``x (n, in)``, ``weight (out, in)``, ``bias (out,)``
        - output: ``(n, out)``
    """
    if uses_onednn(x) and weight.dtype == torch.float32:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
            return _OneDNNLinear.apply(x, weight, bias, relu)
        return _onednn(x.contiguous(), weight.contiguous(), bias, relu)  # no graph to record: no autograd.Function
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out
