"""Truncated backpropagation through an unrolled segment, optionally in windows of a few steps."""

from __future__ import annotations

import torch

from lightning_l2o.errors import ConfigError
from lightning_l2o.estimators.base import Backward, GradientEstimator, MetaObjective, SegmentEstimate
from lightning_l2o.meta_optimizers import MetaOptimizer
from lightning_l2o.unroll import InnerState, LookaheadBatch, MetaLoss


class TruncatedBackprop(GradientEstimator):
    """Exact gradient of the segment's meta-loss (:func:`~lightning_l2o.unroll.unroll`), window by window.

    Args:
        meta_loss: ``train`` (mean training loss over the unroll) or ``lookahead`` (loss right after each update).
        lookahead_batch: for ``lookahead``, a ``fresh`` batch or the ``same`` batch the update was computed on.
        log_meta_loss: average log losses.
        normalise_loss: divide losses by the optimizee's loss at initialisation (task mixtures).
        final_fraction: count only the losses in the last ``final_fraction`` of each task's horizon
            (:class:`~lightning_l2o.estimators.base.MetaObjective`); truncation cannot credit the steps before a
            segment for them, so segments wholly before that window give no gradient.
        backprop_window: cut the segment into windows of at most this many steps, the state detached between
            them (``None``: one window); the windows' gradients are averaged.
    """

    def __init__(self, meta_loss: MetaLoss = "train", lookahead_batch: LookaheadBatch = "fresh",
                 log_meta_loss: bool = False, backprop_window: int | None = None,
                 normalise_loss: bool = False, final_fraction: float = 1.0) -> None:
        self.objective = MetaObjective(meta_loss, lookahead_batch, log_meta_loss, normalise_loss, final_fraction)
        if backprop_window is not None and backprop_window < 1:
            raise ConfigError(f"model.estimator.init_args.backprop_window must be >= 1 or null, got {backprop_window}")
        super().__init__(meta_loss=meta_loss, lookahead_batch=lookahead_batch, log_meta_loss=log_meta_loss,
                         backprop_window=backprop_window, normalise_loss=normalise_loss,
                         final_fraction=final_fraction)
        self.backprop_window = backprop_window

    def estimate(self, rule: MetaOptimizer, state: InnerState, length: int, backward: Backward) -> SegmentEstimate | None:
        window = self.backprop_window or length
        counted = self.objective.counts(state, length)
        lengths = [min(window, length - s) for s in range(0, length, window)]
        meta_losses, inner_losses, infos = [], [], []
        for steps in lengths:
            result = self.objective.unroll(rule, state, steps)
            if not torch.isfinite(result.meta_loss) or not result.state.is_finite():
                return None
            backward(result.meta_loss / len(lengths))
            state = result.state.detached()
            meta_losses.append(result.meta_loss.detach())
            inner_losses.append(result.inner_losses)
            infos.append(result.info)
        info = {key: torch.stack([i[key] for i in infos]).mean() for key in infos[0]}
        return SegmentEstimate(torch.stack(meta_losses).mean(), state, torch.cat(inner_losses), info, counted)
