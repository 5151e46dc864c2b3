"""Task specifications: the plain-data description of one optimizee problem."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass
class TaskSpec:
    """What to optimize: a task family, its architecture and data, a seed and a horizon.

    Args:
        family: task family name (``quadratic``, ``regression``, ``mlp``, ``cnn``).
        arch: keyword arguments of the family's architecture, e.g. ``{"hidden": [32]}`` for ``mlp``.
        dataset: dataset name for families that train on data (``digits``); ``None`` otherwise.
        batch_size: examples per inner step for data-driven families.
        horizon: inner steps T that an optimizee of this task is trained for.
        seed: seeds the problem instance, the initial parameters and the batch order.
        index: position of this task in the stream that produced it (``-1`` outside a stream).
    """

    family: str
    arch: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    batch_size: int = 64
    horizon: int = 100
    seed: int = 0
    index: int = -1

    @property
    def name(self) -> str:
        """Readable id, e.g. ``mlp-digits-hidden32_s101``."""
        arch = "-".join(f"{k}{_compact(v)}" for k, v in sorted(self.arch.items()))
        parts = [self.family, self.dataset, arch]
        return "-".join(p for p in parts if p) + f"_s{self.seed}"

    @property
    def architecture(self) -> str:
        """The spec's name without its seed: tasks of one architecture share it."""
        return self.name.rsplit("_s", 1)[0]

    def with_seed(self, seed: int, index: int = -1) -> TaskSpec:
        return replace(self, seed=seed, index=index)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so that checkpoints load with ``torch.load(weights_only=True)``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(**data)


def _compact(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


@dataclass
class Segment:
    """One outer step's share of an optimizee's training: inner steps ``[start, start + length)`` of ``task``.

    ``index`` is the segment's position in its rank's training stream.
    """

    index: int
    task: TaskSpec
    start: int
    length: int
