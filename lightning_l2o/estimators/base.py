"""How the meta-gradient of one segment of an optimizee's training is estimated (no Lightning here)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers import MetaOptimizer
from lightning_l2o.unroll import InnerState, LookaheadBatch, MetaLoss, UnrollResult, unroll

Backward = Callable[[Tensor], None]


@dataclass
class SegmentEstimate:
    """What an estimator reports for one segment once the meta-gradient is in the rule's ``.grad``.

    Attributes:
        meta_loss: the segment's meta-loss (detached scalar).
        state: the inner state to continue from, detached from any graph.
        inner_losses: ``(K,)`` training losses of the segment's inner steps.
        info: the rule's scalar infos averaged over the segment.
        counted: whether any of the segment's losses is in the objective (``False`` for a segment wholly before the
            window of ``final_fraction`` < 1: its meta-gradient is 0 by construction, and an outer step on it would
            only move the meta-parameters by the outer optimizer's momentum and weight decay).
    """

    meta_loss: Tensor
    state: InnerState
    inner_losses: Tensor
    info: dict[str, Tensor]
    counted: bool = True


class GradientEstimator(ABC):
    """Accumulates an estimate of ``d meta-loss / d rule parameters`` for a segment into ``rule``'s ``.grad``.

    Subclasses pass their constructor arguments to ``super().__init__(**config)`` (stored in the run's
    hyperparameters). An estimator that carries something from segment to segment (persistent particles, random
    streams) returns it from :meth:`state_dict`, which checkpoints hold per rank and meta-batch slot for an exact
    resume. One estimator serves one stream of optimizees: :attr:`stream` (``rank * meta_batch_size + slot``, set
    by ``L2OModule``) offsets the seeds of its random draws.
    """

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.stream = 0

    def state_dict(self) -> dict[str, Any]:
        """What the estimator carries between segments: plain types and tensors only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` returned."""

    @abstractmethod
    def estimate(self, rule: MetaOptimizer, state: InnerState, length: int, backward: Backward) -> SegmentEstimate | None:
        """Run ``length`` inner steps from ``state`` and call ``backward`` on the loss(es) whose gradient is the
        estimate (``L2OModule`` passes ``manual_backward``). Returns ``None`` where the segment went non-finite
        (the caller then discards any gradient and restarts the task)."""


@dataclass(frozen=True)
class MetaObjective:
    """What a segment's meta-loss is (see :func:`~lightning_l2o.unroll.unroll`), shared by every estimator.

    Args:
        meta_loss: ``train`` (mean training loss over the unroll) or ``lookahead`` (loss right after each update).
        lookahead_batch: for ``lookahead``, a ``fresh`` batch or the ``same`` batch the update was computed on.
        log_meta_loss: average log losses.
        normalise_loss: divide losses by the optimizee's loss at initialisation, so that the task families of a
            mixture weigh alike.
        final_fraction: count only the losses in the last ``final_fraction`` of each task's horizon (``1``: every
            step; the classic objective, which rewards fast early progress as much as a low final loss).
    """

    meta_loss: MetaLoss = "train"
    lookahead_batch: LookaheadBatch = "fresh"
    log_meta_loss: bool = False
    normalise_loss: bool = False
    final_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.meta_loss not in ("train", "lookahead") or self.lookahead_batch not in ("fresh", "same"):
            raise ConfigError(f"model.estimator.init_args.meta_loss must be train|lookahead and lookahead_batch "
                              f"fresh|same, got {self.meta_loss!r}, {self.lookahead_batch!r}")
        if not 0 < self.final_fraction <= 1:
            raise ConfigError(f"model.estimator.init_args.final_fraction must be in (0, 1], got "
                              f"{self.final_fraction!r}; e.g. 0.25 for the last quarter of each horizon, 1 for all")

    def counts(self, state: InnerState, length: int) -> bool:
        """Whether any loss of the ``length`` inner steps from ``state`` is in the objective: the segment reaches past
        the first ``(1 - final_fraction)`` of its task's horizon (always, at ``final_fraction`` 1)."""
        return self.final_fraction == 1.0 or state.step + length > (1.0 - self.final_fraction) * state.task.spec.horizon

    def unroll(self, rule: MetaOptimizer, state: InnerState, length: int, differentiable: bool = True) -> UnrollResult:
        """``length`` inner steps from ``state`` and their meta-loss."""
        return unroll(rule, state, length, self.meta_loss, self.lookahead_batch, self.log_meta_loss, differentiable,
                      self.normalise_loss, self.final_fraction)
