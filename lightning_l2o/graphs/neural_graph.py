"""Neural graphs (Kofinas et al. 2024): a network's neurons as nodes, its weights as edges, its biases as node features.

A chain of ``Linear`` / ``Conv2d`` layers with widths ``[n_0, n_1, ..., n_L]`` (input features or channels,
then each layer's outputs) becomes a graph with ``sum(n_l)`` nodes and dense edges ``i -> j`` from every
node of layer ``l`` to every node of layer ``l + 1``. Edge ``(i, j)`` carries the kernel ``W[j, i]``
zero-padded, centred, to ``kernel_size x kernel_size`` (a ``Linear`` weight is a 1x1 kernel); node ``j``
of layer ``l + 1`` carries its bias; input nodes carry nothing. Two precomputed index maps connect the
flat parameter vector to the graph, one indexed operation each way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.index import index2ptr

from lightning_l2o.errors import ConfigError

DEFAULT_KERNEL_SIZE = 5
PASS_THROUGH = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Identity, nn.Softmax, nn.LogSoftmax,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
)
LOCAL_POOLING = (nn.MaxPool2d, nn.AvgPool2d)
GLOBAL_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
SUPPORTED = ("Linear, Conv2d (groups=1), activations, Dropout, MaxPool2d/AvgPool2d, global pooling "
             "(AdaptiveAvgPool2d(1) / AdaptiveMaxPool2d(1)) followed by Flatten, nested in nn.Sequential")


@dataclass(frozen=True, eq=False)
class NeuralGraph:
    """The neural graph of one architecture and the index maps between it and the flat parameter vector.

    Attributes:
        layer_layout: ``(n_0, ..., n_L)``: nodes per layer (inputs, then each layer's outputs).
        kernel_size: ``K``: every edge carries a ``K x K`` kernel.
        data: ``torch_geometric.data.Data`` with ``edge_index`` ``(2, E)`` (source in layer ``l``, target in
            ``l + 1``), ``node_layer`` ``(N,)`` (each node's layer), ``node_index`` ``(N,)`` (its index within
            the layer) and ``num_nodes`` ``N``. Nodes come layer by layer; edges too, each layer's ``n_{l+1} n_l``
            edges in the row-major order of its weight ``W[j, i]``, so they view as an ``(n_{l+1}, n_l)`` matrix.
        param_slot: ``(n,)`` long: the row of each flat parameter in the stacked feature table of
            :meth:`to_graph` (``E * K * K`` weight slots, then ``N`` bias slots).
        param_owner: ``(n,)`` long: the row of each flat parameter's edge (weights) or node (biases) in
            ``[edge values (E); node values (N)]`` (:meth:`to_params`).
    """

    layer_layout: tuple[int, ...]
    kernel_size: int
    data: Data = field(repr=False)
    param_slot: Tensor = field(repr=False)
    param_owner: Tensor = field(repr=False)

    @property
    def num_nodes(self) -> int:
        return int(self.data.num_nodes)

    @property
    def num_edges(self) -> int:
        return int(self.data.edge_index.shape[1])

    @property
    def edge_index(self) -> Tensor:
        return self.data.edge_index

    @cached_property
    def bidirectional_order(self) -> Tensor:
        """``(2E,)``: the forward edges, then each one reversed, as rows of ``[forward; reversed]`` sorted by
        target node (stable), so that each node's incoming messages are contiguous."""
        targets = torch.cat([self.edge_index[1], self.edge_index[0]])
        return targets.argsort(stable=True)

    @cached_property
    def bidirectional_edge_index(self) -> Tensor:
        """``(2, 2E)``: the forward edges and each one reversed, in :attr:`bidirectional_order`."""
        return torch.cat([self.edge_index, self.edge_index.flip(0)], dim=1)[:, self.bidirectional_order]

    @cached_property
    def bidirectional_ptr(self) -> Tensor:
        """``(N + 1,)``: CSR pointer of :attr:`bidirectional_edge_index`'s targets (node ``v`` receives messages
        ``ptr[v]:ptr[v + 1]``)."""
        return index2ptr(self.bidirectional_edge_index[1], self.num_nodes)

    @cached_property
    def forward_edge_rows(self) -> Tensor:
        """``(E,)``: the row of each forward edge in :attr:`bidirectional_edge_index`."""
        return self.bidirectional_order.argsort()[: self.num_edges]  # the inverse permutation's first E rows

    @property
    def node_layer(self) -> Tensor:
        return self.data.node_layer

    @property
    def node_index(self) -> Tensor:
        return self.data.node_index

    def to_graph(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """Per-parameter values ``(n, F)`` -> edge features ``(E, K*K*F)`` and node features ``(N, F)``.

        Kernel elements sit centred in their ``K x K`` slots (row-major, each slot's ``F`` values together);
        empty slots, input nodes and layers without bias are zeros. Differentiable.
        """
        slots = self.kernel_size**2 * self.num_edges
        table = values.new_zeros(slots + self.num_nodes, values.shape[1]).index_copy(0, self.param_slot, values)
        return table[:slots].view(self.num_edges, -1), table[slots:]

    def owner_table(self, edge_values: Tensor, node_values: Tensor) -> Tensor:
        """Edge ``(E, D)`` and node ``(N, D)`` values -> ``(E + N, D)``: the rows that :attr:`param_owner` indexes."""
        return torch.cat([edge_values, node_values])

    def to_params(self, edge_values: Tensor, node_values: Tensor) -> Tensor:
        """Edge ``(E, D)`` and node ``(N, D)`` values -> ``(n, D)``: each weight gets its edge's, each bias its node's."""
        return self.owner_table(edge_values, node_values)[self.param_owner]

    @classmethod
    def from_module(cls, module: nn.Module, kernel_size: int = DEFAULT_KERNEL_SIZE,
                    device: torch.device | str | None = None) -> NeuralGraph:
        """Build the graph of ``module``'s chain of layers; its flat vector is ``module.parameters()`` in order.

        Raises a :class:`ConfigError` naming the first module that a neural graph cannot represent.
        """
        layers = _layer_chain(module, kernel_size)
        offsets, offset = {}, 0
        for param in module.parameters():
            offsets[id(param)] = offset
            offset += param.numel()
        covered = {id(p) for layer in layers for p in layer.parameters(recurse=False)}
        for name, param in module.named_parameters():
            if id(param) not in covered:
                raise ConfigError(f"neural graph: parameter '{name}' belongs to no Linear/Conv2d layer of the chain; "
                                  f"supported: {SUPPORTED}")
        layout = [_in_width(layers[0])] + [_out_width(layer) for layer in layers]
        node_offsets = torch.tensor([0, *layout]).cumsum(0).tolist()
        slots_per_edge = kernel_size**2
        num_edges = sum(a * b for a, b in itertools.pairwise(layout))
        num_nodes = node_offsets[-1]
        src, dst, slot, owner, flat_index = [], [], [], [], []
        edge_offset = 0
        for index, layer in enumerate(layers):
            n_in, n_out = layout[index], layout[index + 1]
            weight = layer.weight
            kh, kw = (weight.shape[2], weight.shape[3]) if weight.dim() == 4 else (1, 1)
            edges = torch.arange(n_in * n_out)
            src.append(node_offsets[index] + edges % n_in)
            dst.append(node_offsets[index + 1] + edges // n_in)
            element = torch.arange(weight.numel())
            edge = edge_offset + element // (kh * kw)
            row = (element % (kh * kw)) // kw + (kernel_size - kh) // 2
            col = element % kw + (kernel_size - kw) // 2
            slot.append(edge * slots_per_edge + row * kernel_size + col)
            owner.append(edge)
            flat_index.append(offsets[id(weight)] + element)
            if layer.bias is not None:
                nodes = node_offsets[index + 1] + torch.arange(n_out)
                slot.append(num_edges * slots_per_edge + nodes)
                owner.append(num_edges + nodes)
                flat_index.append(offsets[id(layer.bias)] + torch.arange(n_out))
            edge_offset += n_in * n_out
        order = torch.cat(flat_index).argsort()
        node_layer = torch.repeat_interleave(torch.arange(len(layout)), torch.tensor(layout))
        node_index = torch.arange(num_nodes) - torch.tensor(node_offsets)[node_layer]
        data = Data(edge_index=torch.stack([torch.cat(src), torch.cat(dst)]), node_layer=node_layer,
                    node_index=node_index, num_nodes=num_nodes)
        device = torch.device(device) if device is not None else torch.device("cpu")
        return cls(tuple(layout), kernel_size, data.to(device), torch.cat(slot)[order].to(device),
                   torch.cat(owner)[order].to(device))


def _in_width(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _out_width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The root's children in registration order, recursing into ``nn.Sequential`` / ``nn.ModuleList``."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        yield prefix or type(module).__name__, module
        return
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            yield from _leaves(child, path)
        elif isinstance(child, nn.modules.loss._Loss):
            continue
        else:
            yield path, child


def _layer_chain(module: nn.Module, kernel_size: int) -> list[nn.Module]:
    """The ``Linear`` / ``Conv2d`` layers of ``module`` in order, after checking that they form a chain."""
    layers: list[nn.Module] = []
    shape = "any"  # what flows between modules: any (before the first layer), map, pooled, flat
    for path, child in _leaves(module):
        name = f"module '{path}' ({type(child).__name__})"
        if isinstance(child, nn.Conv2d):
            if shape not in ("any", "map") or child.groups != 1:
                reason = "groups != 1" if child.groups != 1 else "it follows a flattened or pooled input"
                raise ConfigError(f"neural graph: {name} is not supported ({reason}); supported: {SUPPORTED}")
            if max(child.kernel_size) > kernel_size:
                raise ConfigError(f"neural graph: {name} has a {child.kernel_size} kernel, larger than the graph's "
                                  f"{kernel_size}x{kernel_size} edges; use kernels up to {kernel_size}x{kernel_size}")
            shape = "map"
        elif isinstance(child, nn.Linear):
            if shape not in ("any", "flat"):
                raise ConfigError(f"neural graph: {name} follows a feature map that was not globally pooled and "
                                  f"flattened; supported: {SUPPORTED}")
            shape = "flat"
        elif isinstance(child, GLOBAL_POOLING) and shape == "map":
            if child.output_size not in (1, (1, 1)):
                raise ConfigError(f"neural graph: {name} must pool to 1x1 (output_size=1); supported: {SUPPORTED}")
            shape = "pooled"
        elif isinstance(child, LOCAL_POOLING) and shape == "map":
            continue
        elif isinstance(child, nn.Flatten):
            if shape == "map":
                raise ConfigError(f"neural graph: {name} flattens a feature map that was not globally pooled (add "
                                  f"nn.AdaptiveAvgPool2d(1) before it); supported: {SUPPORTED}")
            shape = "flat"
        elif isinstance(child, PASS_THROUGH):
            continue
        else:
            raise ConfigError(f"neural graph: {name} is not supported; supported: {SUPPORTED}")
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            if layers and _in_width(child) != _out_width(layers[-1]):
                raise ConfigError(f"neural graph: {name} takes {_in_width(child)} inputs but the previous layer "
                                  f"gives {_out_width(layers[-1])}; supported: {SUPPORTED}")
            layers.append(child)
    if not layers:
        raise ConfigError(f"neural graph: {type(module).__name__} has no Linear or Conv2d layer; supported: {SUPPORTED}")
    return layers
