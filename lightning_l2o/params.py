"""The static description of an optimizee: its flat parameter layout and, for chains of layers, its neural graph.

Keeping all parameters in one flat vector lets every update rule act on all of them with one call
(the inner loop's hot path), while :class:`ParamLayout` recovers the named, shaped views that
``torch.func.functional_call`` needs. :class:`ParamSpace` is what every update rule receives beside
the flat vectors on each call: built once per architecture and device (:func:`ParamSpace.of_module`,
:func:`ParamSpace.of_layout` cache it), frozen, never part of an optimizer's state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError

if TYPE_CHECKING:
    from lightning_l2o.graphs import NeuralGraph

SPACE_CACHE_SIZE = 64


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of the tensors packed into a flat parameter vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def from_tensors(cls, named: Iterable[tuple[str, Tensor]]) -> ParamLayout:
        items = list(named)
        return cls(tuple(n for n, _ in items), tuple(t.shape for _, t in items))

    @cached_property
    def numels(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes)

    @property
    def total(self) -> int:
        """Length of the flat vector."""
        return sum(self.numels)

    def segment_ids(self, device: torch.device | str = "cpu") -> Tensor:
        """``(total,)`` long tensor: for each flat entry, the index of the tensor it belongs to."""
        counts = torch.tensor(self.numels, device=device)
        return torch.repeat_interleave(torch.arange(len(self.numels), device=device), counts)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Flat ``(total,)`` vector -> ``{name: view of its shape}`` (differentiable, no copy)."""
        chunks = flat.split(self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    @staticmethod
    def flatten(tensors: Sequence[Tensor]) -> Tensor:
        """Tensors of any shapes -> one flat ``(total,)`` vector."""
        return torch.cat([t.reshape(-1) for t in tensors])


@dataclass(frozen=True, eq=False)
class ParamSpace:
    """What an update rule may know about the optimizee besides its parameter values; never changes while training.

    Attributes:
        layout: names and shapes of the flat vector's tensors.
        device: where the tensors below live.
        segment_ids: ``(n,)`` long: the tensor each flat entry belongs to.
        segment_sizes: ``(num_tensors,)`` float: each tensor's number of entries.
        fans: ``(num_tensors, 2)`` float: each tensor's fan-in and fan-out (built on first use).
        graph: the optimizee's neural graph (:class:`~lightning_l2o.graphs.NeuralGraph`), built on first use
            from the module; ``None`` where there is no module or it is not a chain of layers
            (:attr:`graph_error` then says why).
    """

    layout: ParamLayout
    device: torch.device
    segment_ids: Tensor = field(repr=False)
    segment_sizes: Tensor = field(repr=False)
    module: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def of_layout(cls, layout: ParamLayout, device: torch.device | str = "cpu") -> ParamSpace:
        """The (cached) space of a bare layout: no module, so no neural graph."""
        device = torch.device(device)
        return _cached(("layout", layout, str(device)), lambda: cls._build(layout, device, None))

    @classmethod
    def of_module(cls, module: nn.Module, device: torch.device | str | None = None) -> ParamSpace:
        """The (cached) space of ``module``'s parameters, in ``module.parameters()`` order.

        Modules with the same structure (``repr``) and parameter shapes share one space per device.
        """
        device = torch.device(device) if device is not None else _module_device(module)
        layout = ParamLayout.from_tensors(module.named_parameters())
        return _cached(("module", repr(module), layout, str(device)), lambda: cls._build(layout, device, module))

    @classmethod
    def _build(cls, layout: ParamLayout, device: torch.device, module: nn.Module | None) -> ParamSpace:
        sizes = torch.tensor(layout.numels, dtype=torch.get_default_dtype(), device=device)
        return cls(layout, device, layout.segment_ids(device), sizes, module)

    @property
    def numel(self) -> int:
        return self.layout.total

    def segment_mean(self, x: Tensor) -> Tensor:
        """The mean of ``x`` ``(n, ...)`` over each parameter tensor's entries: ``(num_tensors, ...)``."""
        sums = x.new_zeros(len(self.segment_sizes), *x.shape[1:]).index_add(0, self.segment_ids, x)
        return sums / self.segment_sizes.to(x.dtype).view(-1, *[1] * (x.dim() - 1))

    @cached_property
    def fans(self) -> Tensor:
        """Each tensor's ``(fan_in, fan_out)``: ``(num_tensors, 2)`` float. The fan-out is the first dimension, the
        fan-in the product of the others (a weight ``(out, in, kh, kw)``: ``in * kh * kw``; a 1-D tensor such as a
        bias: 1)."""
        fans = [(shape[1:].numel(), shape[0] if len(shape) else 1) for shape in self.layout.shapes]
        return torch.tensor(fans, dtype=torch.get_default_dtype(), device=self.device)

    @cached_property
    def _graph_or_error(self) -> NeuralGraph | ConfigError:
        from lightning_l2o.graphs import NeuralGraph

        if self.module is None:
            return ConfigError("the optimizee is a bare parameter vector with no nn.Module (parameters handed to "
                               "the optimizer, or a task such as quadratic); pass the model itself, e.g. "
                               "load_learned_optimizer(ckpt, model) or LearnedOptimizer(model, rule)")
        try:
            return NeuralGraph.from_module(self.module, device=self.device)
        except ConfigError as err:
            return err

    @property
    def graph(self) -> NeuralGraph | None:
        """The neural graph, or ``None`` where the optimizee has none (see :meth:`require_graph`)."""
        graph = self._graph_or_error
        return None if isinstance(graph, ConfigError) else graph

    def require_graph(self, owner: str) -> NeuralGraph:
        """The neural graph; a :class:`ConfigError` naming ``owner`` and the reason where there is none."""
        graph = self._graph_or_error
        if isinstance(graph, ConfigError):
            raise ConfigError(f"{owner} needs the optimizee's neural graph: {graph}")
        return graph


_SPACES: OrderedDict[tuple, ParamSpace] = OrderedDict()


def _cached(key: tuple, build) -> ParamSpace:
    if key in _SPACES:
        _SPACES.move_to_end(key)
        return _SPACES[key]
    space = _SPACES[key] = build()
    if len(_SPACES) > SPACE_CACHE_SIZE:
        _SPACES.popitem(last=False)
    return space


def _module_device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
