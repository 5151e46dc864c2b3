"""FiLM messages and their mean / min / max / std per node as one compiled CPU kernel, forward and backward.

In PyTorch's eager mode a :class:`~lightning_l2o.meta_optimizers.gnn.layers.FiLMPNAConv` layer makes a dozen passes
over its ``(E, C)`` edge tensors to build the messages ``shift + scale * (t_i + s_j)`` and aggregate them (two
gathers, the sum, the FiLM product, squares, sums, segment max and min, and as many again in the backward): on task
17's graph (3,744 edges, 64 channels) that is ~5 ms of a layer's ~8 ms, forward and backward. :func:`film_aggregate`
does it in one pass over the edges each way (``film_aggregation.c``), never storing the messages: the backward
recomputes them.

Its values are bit for bit those of the eager path (the same float operations in the same order; tests), so it
serves meta-training, meta-test and deployed steps alike and every figure stays as it was; its gradients agree to
float rounding. It applies to float32 CPU tensors whose edges come sorted by target (a ``target_ptr``) and is built
and switched like every compiled kernel (:mod:`lightning_l2o.compiled_kernels`); elsewhere the eager path runs.
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

SOURCE = Path(__file__).with_name("film_aggregation.c")
STATS = ("mean", "min", "max", "std")
"""The aggregations the kernel computes, in the order of its output's second dimension."""


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel (built on first call), or ``None`` with a warning saying why it is unavailable."""
    lib = compiled_kernels.load(SOURCE, "PNA's message aggregation")
    if lib is None:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.film_aggregate_forward.argtypes = [size, size, *[pointer] * 6]
    lib.film_aggregate_forward.restype = None
    lib.film_aggregate_backward.argtypes = [size, size, *[pointer] * 11]
    lib.film_aggregate_backward.restype = None
    return lib


def applies(target: Tensor, film: Tensor, target_ptr: Tensor | None) -> bool:
    """Whether :func:`film_aggregate` can compute this layer's aggregation: target-sorted edges, float32 on the
    CPU, and the kernel enabled and built."""
    return (target_ptr is not None and compiled_kernels.enabled() and target.device.type == "cpu"
            and target.dtype == film.dtype == torch.float32 and library() is not None)


class _FiLMAggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, target: Tensor, source: Tensor, film: Tensor, ptr: Tensor, source_index: Tensor,
                ) -> Tensor:
        target, source, film = target.contiguous(), source.contiguous(), film.contiguous()
        ptr, source_index = ptr.contiguous(), source_index.contiguous()
        nodes, channels = target.shape
        stats = target.new_empty(nodes, len(STATS), channels)
        library().film_aggregate_forward(nodes, channels, target.data_ptr(), source.data_ptr(), film.data_ptr(),
                                         ptr.data_ptr(), source_index.data_ptr(), stats.data_ptr())
        ctx.save_for_backward(target, source, film, ptr, source_index, stats)
        return stats

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_stats: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        target, source, film, ptr, source_index, stats = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_stats = grad_stats.contiguous()
        nodes, channels = target.shape
        grad_target, grad_source, grad_film = torch.empty_like(target), torch.empty_like(source), torch.empty_like(film)
        scratch = target.new_empty(4, channels)
        library().film_aggregate_backward(
            nodes, channels, target.data_ptr(), source.data_ptr(), film.data_ptr(), ptr.data_ptr(),
            source_index.data_ptr(), stats.data_ptr(), grad_stats.data_ptr(), grad_target.data_ptr(),
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
    torch_geometric's aggregations compute them (see :func:`applies` for where it runs).

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
