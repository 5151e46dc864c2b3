"""Flat parameter vectors: every optimizee's parameters live in one 1-D tensor.

Keeping all parameters in one flat vector lets every update rule act on all of them with one call
(the inner loop's hot path), while :class:`ParamLayout` recovers the named, shaped views that
``torch.func.functional_call`` needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


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
