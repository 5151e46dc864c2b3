"""How the meta-gradient of one segment of an optimizee's training is estimated (no Lightning here)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from lightning_l2o.meta_optimizers import MetaOptimizer
from lightning_l2o.unroll import InnerState

Backward = Callable[[Tensor], None]


@dataclass
class SegmentEstimate:
    """What an estimator reports for one segment once the meta-gradient is in the rule's ``.grad``.

    Attributes:
        meta_loss: the segment's meta-loss (detached scalar).
        state: the inner state to continue from, detached from any graph.
        inner_losses: ``(K,)`` training losses of the segment's inner steps.
        info: the rule's scalar infos averaged over the segment.
    """

    meta_loss: Tensor
    state: InnerState
    inner_losses: Tensor
    info: dict[str, Tensor]


class GradientEstimator(ABC):
    """Accumulates an estimate of ``d meta-loss / d rule parameters`` for a segment into ``rule``'s ``.grad``."""

    @abstractmethod
    def estimate(self, rule: MetaOptimizer, state: InnerState, length: int, backward: Backward) -> SegmentEstimate | None:
        """Run ``length`` inner steps from ``state`` and call ``backward`` on the loss(es) whose gradient is the
        estimate (``L2OModule`` passes ``manual_backward``). Returns ``None`` where the segment went non-finite
        (the caller then discards any gradient and restarts the task)."""
