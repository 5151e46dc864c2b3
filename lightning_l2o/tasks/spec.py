"""Task specifications: the plain-data description of one optimizee problem."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks.presets import canonical_preset, preset_fields

DEFAULT_BATCH_SIZE = 64


@dataclass
class TaskSpec:
    """What to optimize: a task family, its architecture and data, a seed and a horizon.

    Args:
        family: task family name (``quadratic``, ``regression``, ``mlp``, ``cnn``).
        arch: keyword arguments of the family's architecture, e.g. ``{"hidden": [32]}`` for ``mlp``.
        dataset: dataset name for families that train on data (``digits``, ``mnist``, ``fashion_mnist``,
            ``cifar10``); ``None`` otherwise.
        batch_size: examples per inner step for data-driven families (default: the preset's, else 64).
        horizon: inner steps T that an optimizee of this task is trained for.
        seed: seeds the problem instance, the initial parameters and the batch order.
        index: position of this task in the stream that produced it (``-1`` outside a stream).
        preset: a named task (:mod:`~lightning_l2o.tasks.presets`, e.g. ``"17"`` or ``cifar10-depth2``) that
            fills ``family``, ``dataset``, ``arch`` and ``batch_size``.
        data_dir: folder of torchvision datasets (``None``: ``$L2O_DATA_DIR``, else ``./data``).
        download: let torchvision download a missing dataset into ``data_dir`` (needs internet).
    """

    family: str = ""
    arch: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    batch_size: int | None = None
    horizon: int = 100
    seed: int = 0
    index: int = -1
    preset: str | int | None = None
    data_dir: str | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.preset is not None:
            self.preset = canonical_preset(self.preset)
            fields = preset_fields(self.preset)
            for key in ("family", "dataset", "arch"):
                given = getattr(self, key)
                if given and given != fields[key]:
                    raise ConfigError(f"task preset '{self.preset}' sets {key}={fields[key]!r}; drop {key}={given!r} "
                                      f"or drop the preset")
                setattr(self, key, fields[key])
            if self.batch_size is None:
                self.batch_size = fields["batch_size"]
        if not self.family:
            raise ConfigError("a task needs a family (quadratic, regression, mlp, cnn) or a preset (e.g. preset: 17)")
        if self.batch_size is None:
            self.batch_size = DEFAULT_BATCH_SIZE

    @property
    def name(self) -> str:
        """Readable id, e.g. ``mlp-digits-hidden32_s101`` or ``fashion_mnist-width16_s101`` for a preset."""
        return f"{self.architecture}_s{self.seed}"

    @property
    def architecture(self) -> str:
        """The spec's name without its seed: tasks of one architecture share it."""
        if self.preset is not None:
            return self.preset
        arch = "-".join(f"{k}{_compact(v)}" for k, v in sorted(self.arch.items()))
        return "-".join(p for p in (self.family, self.dataset, arch) if p)

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
