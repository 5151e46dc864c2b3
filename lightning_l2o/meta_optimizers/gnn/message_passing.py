"""The GNN layers' passes over edges as compiled CPU kernels, forward and backward.

In PyTorch's eager mode a :class:`~lightning_l2o.meta_optimizers.gnn.layers.FiLMPNAConv` layer makes a dozen passes
over its ``(E, C)`` edge tensors to build the messages ``shift + scale * (t_i + s_j)`` and aggregate them (two
gathers, the sum, the FiLM product, squares, sums, segment max and min, and as many again in the backward): on task
17's graph (3,744 edges, 64 channels) that is ~5 ms of a layer's ~8 ms, forward and backward. :func:`film_aggregate`
does it in one pass over the edges each way (``message_passing.c``), never storing the messages: the backward
recomputes them. :func:`add_node_terms` does an :class:`~lightning_l2o.meta_optimizers.gnn.layers.EdgeUpdate`'s
``e + a[source] + b[target]`` in one pass, and its backward's two scatter-sums in another.

Their values are bit for bit those of the eager path (the same float operations in the same order; tests), so they
serve meta-training, meta-test and deployed steps alike and every figure stays as it was; their gradients agree to
float rounding. They apply to float32 CPU tensors (the FiLM aggregation to edges sorted by target, given their
``target_ptr``) and are built and switched like every compiled kernel (:mod:`lightning_l2o.compiled_kernels`);
elsewhere the eager path runs.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from lightning_l2o import compiled_kernels

SOURCE = Path(__file__).with_name("message_passing.c")
STATS = ("mean", "min", "max", "std")
"""The aggregations :func:`film_aggregate` returns, in the order of its output's second dimension."""


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first call), or ``None`` with a warning saying why they are unavailable."""
    lib = compiled_kernels.load(SOURCE, "the GNN layers' message passing")
    if lib is None:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for name, sizes, pointers in (("film_aggregate_forward", 2, 7), ("film_aggregate_backward", 2, 12),
                                  ("add_node_terms_forward", 2, 6), ("add_node_terms_backward", 3, 5)):
        getattr(lib, name).argtypes = [*[size] * sizes, *[pointer] * pointers]
        getattr(lib, name).restype = None
    return lib


def applies(*tensors: Tensor) -> bool:
    """Whether the kernels can compute on ``tensors``: float32 on the CPU, and the kernels enabled and built."""
    return (compiled_kernels.enabled() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and library() is not None)


class _FiLMAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, target: Tensor, source: Tensor, film: Tensor, ptr: Tensor, source_index: Tensor,
                ) -> Tensor:
        target, source, film = target.contiguous(), source.contiguous(), film.contiguous()
        ptr, source_index = ptr.to(torch.int64).contiguous(), source_index.to(torch.int64).contiguous()
        nodes, channels = target.shape
        stats, ties = target.new_empty(nodes, len(STATS), channels), target.new_empty(nodes, 2, channels)
        library().film_aggregate_forward(nodes, channels, target.data_ptr(), source.data_ptr(), film.data_ptr(),
                                         ptr.data_ptr(), source_index.data_ptr(), stats.data_ptr(), ties.data_ptr())
        ctx.save_for_backward(target, source, film, ptr, source_index, stats, ties)
        return stats

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_stats: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        target, source, film, ptr, source_index, stats, ties = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_stats = grad_stats.contiguous()
        nodes, channels = target.shape
        grad_target, grad_source, grad_film = torch.empty_like(target), torch.empty_like(source), torch.empty_like(film)
        scratch = target.new_empty(4, channels)
        library().film_aggregate_backward(
            nodes, channels, target.data_ptr(), source.data_ptr(), film.data_ptr(), ptr.data_ptr(),
            source_index.data_ptr(), stats.data_ptr(), ties.data_ptr(), grad_stats.data_ptr(), grad_target.data_ptr(),
            grad_source.data_ptr(), grad_film.data_ptr(), scratch.data_ptr())
        return grad_target, grad_source, grad_film, None, None


def check_edges(target_ptr: Tensor, source_index: Tensor, num_nodes: int) -> None:
    """Raise ``ValueError`` unless ``target_ptr`` is a CSR pointer over ``source_index``'s edges and every source
    is a node: the kernel reads where they point."""
    if target_ptr.shape != (num_nodes + 1,) or target_ptr[0] != 0 or target_ptr[-1] != len(source_index) or (
            len(target_ptr) > 1 and bool((target_ptr.diff() < 0).any())):
        raise ValueError(f"target_ptr must be the CSR pointer of the target-sorted edges: {num_nodes + 1} "
                         f"non-decreasing offsets from 0 to the {len(source_index)} edges, got shape "
                         f"{tuple(target_ptr.shape)} from {target_ptr[:1].tolist()} to {target_ptr[-1:].tolist()}; "
                         f"build it with NeuralGraph (bidirectional_ptr)")
    if len(source_index) and not 0 <= int(source_index.min()) <= int(source_index.max()) < num_nodes:
        raise ValueError(f"every edge's source node must be one of the {num_nodes} nodes, got indices from "
                         f"{int(source_index.min())} to {int(source_index.max())}")


def film_aggregate(target: Tensor, source: Tensor, film: Tensor, target_ptr: Tensor, source_index: Tensor) -> Tensor:
    """Mean, min, max and std over each node's incoming FiLM messages ``shift_e + scale_e * (t_i + s_j)``, as
    torch_geometric's aggregations compute them (where :func:`applies`).

    Args:
        target: ``t``, the target node's term of each message.
        source: ``s``, the source node's term.
        film: ``(scale, shift)`` of each edge, concatenated.
        target_ptr: CSR pointer of the target-sorted edges: node ``i``'s are ``target_ptr[i] : target_ptr[i + 1]``.
        source_index: the source node of each (target-sorted) edge.

    Shapes:
        - input: ``target``, ``source`` ``(N, C)``, ``film`` ``(E, 2C)``, ``target_ptr`` ``(N + 1,)``,
          ``source_index`` ``(E,)``
        - output: ``(N, 4, C)``, the aggregations in the order of :data:`STATS`
    """
    check_edges(target_ptr, source_index, len(target))
    mean, low, high, var = _FiLMAggregate.apply(target, source, film, target_ptr, source_index).unbind(1)
    std = var.clamp(min=1e-5).sqrt()  # torch_geometric's StdAggregation, by the same ops (and their gradients)
    std = std.masked_fill(std <= math.sqrt(1e-5), 0.0)
    return torch.stack([mean, low, high, std], dim=1)


class _AddNodeTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, edge: Tensor, source_term: Tensor, target_term: Tensor, edge_index: Tensor,
                ) -> Tensor:
        edge, source_term, target_term = edge.contiguous(), source_term.contiguous(), target_term.contiguous()
        source_index, target_index = edge_index.to(torch.int64).contiguous()
        out = torch.empty_like(edge)
        library().add_node_terms_forward(len(edge), edge.shape[1], edge.data_ptr(), source_term.data_ptr(),
                                         target_term.data_ptr(), source_index.data_ptr(), target_index.data_ptr(),
                                         out.data_ptr())
        ctx.save_for_backward(source_index, target_index)
        ctx.num_nodes = len(source_term)  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        source_index, target_index = ctx.saved_tensors  # type: ignore[attr-defined]
        grad = grad.contiguous()
        grad_source = grad.new_empty(ctx.num_nodes, grad.shape[1])  # type: ignore[attr-defined]
        grad_target = torch.empty_like(grad_source)
        library().add_node_terms_backward(len(grad), len(grad_source), grad.shape[1], grad.data_ptr(),
                                          source_index.data_ptr(), target_index.data_ptr(), grad_source.data_ptr(),
                                          grad_target.data_ptr())
        return grad, grad_source, grad_target, None


def add_node_terms(edge: Tensor, source_term: Tensor, target_term: Tensor, edge_index: Tensor) -> Tensor:
    """``edge + source_term[source] + target_term[target]``, through the kernel where :func:`applies`.

    Shapes:
        - input: ``edge`` ``(E, C)``, ``source_term``, ``target_term`` ``(N, C)``, ``edge_index`` ``(2, E)``
        - output: ``(E, C)``
    """
    source, target = edge_index
    if not applies(edge, source_term, target_term):
        return edge + source_term[source] + target_term[target]
    num_nodes = len(source_term)
    if target_term.shape != source_term.shape or (edge_index.numel() and not (
            0 <= int(edge_index.min()) and int(edge_index.max()) < num_nodes)):
        raise ValueError(f"edge_index must join the {num_nodes} nodes of source_term and target_term (shapes "
                         f"{tuple(source_term.shape)}, {tuple(target_term.shape)}), got node indices from "
                         f"{int(edge_index.min())} to {int(edge_index.max())}")
    return _AddNodeTerms.apply(edge, source_term, target_term, edge_index)
