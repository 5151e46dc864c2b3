"""Persistent evolution strategies (PES, Vicol et al. 2021): unbiased meta-gradients over the whole horizon."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from lightning_l2o.errors import ConfigError
from lightning_l2o.estimators.base import Backward, GradientEstimator, MetaObjective, SegmentEstimate
from lightning_l2o.meta_optimizers import MetaOptimizer
from lightning_l2o.unroll import InnerState, LookaheadBatch, MetaLoss

Position = tuple[int, int, int]


class PersistentES(GradientEstimator):
    """Antithetic persistent evolution strategies.

    ``num_pairs`` antithetic pairs of optimizees follow the task from segment to segment (persistent particles);
    in each segment pair ``i`` trains with meta-parameters ``θ + ε_i`` and ``θ - ε_i``, ``ε_i ~ N(0, σ² I)``
    drawn afresh, and keeps ``ξ_i``, the sum of its ``ε_i`` since the task started. The segment's estimate

        ``g = Σ_i ξ_i (L_i⁺ - L_i⁻) / (2 N σ²)``

    is unbiased for the gradient of the Gaussian-smoothed sum of the segment meta-losses over the whole horizon:
    no truncation bias, no backpropagation (2N forward unrolls per segment). Every particle starts a task from the
    same optimizee and sees the same batches. The state the module carries on is the first particle's.

    Args:
        num_pairs: antithetic pairs N (2N optimizees per task).
        sigma: standard deviation σ of the perturbations of every meta-parameter.
        meta_loss: ``train`` or ``lookahead`` (see :func:`~lightning_l2o.unroll.unroll`).
        lookahead_batch: for ``lookahead``, a ``fresh`` batch or the ``same`` batch.
        log_meta_loss: average log losses.
        normalise_loss: divide losses by the optimizee's loss at initialisation (task mixtures).
        final_fraction: count only the losses in the last ``final_fraction`` of each task's horizon
            (:class:`~lightning_l2o.estimators.base.MetaObjective`); the particles' accumulated perturbations credit
            the earlier steps for them, so the estimate stays unbiased for that objective.
        seed: seed of the perturbations (offset by the optimizee stream: the rank and meta-batch slot).
    """

    def __init__(self, num_pairs: int = 8, sigma: float = 0.01, meta_loss: MetaLoss = "train",
                 lookahead_batch: LookaheadBatch = "fresh", log_meta_loss: bool = False, normalise_loss: bool = False,
                 final_fraction: float = 1.0, seed: int = 0) -> None:
        if num_pairs < 1 or not sigma > 0:
            raise ConfigError(f"model.estimator: num_pairs must be >= 1 and sigma > 0, got {num_pairs}, {sigma}")
        self.objective = MetaObjective(meta_loss, lookahead_batch, log_meta_loss, normalise_loss, final_fraction)
        super().__init__(num_pairs=num_pairs, sigma=sigma, meta_loss=meta_loss, lookahead_batch=lookahead_batch,
                         log_meta_loss=log_meta_loss, normalise_loss=normalise_loss, final_fraction=final_fraction,
                         seed=seed)
        self.num_pairs, self.sigma, self.seed = num_pairs, sigma, seed
        self._generator: torch.Generator | None = None
        self._particles: list[InnerState] = []
        self._accumulated: Tensor | None = None
        self._position: Position | None = None
        self._restored: dict[str, Any] | None = None

    def estimate(self, rule: MetaOptimizer, state: InnerState, length: int, backward: Backward) -> SegmentEstimate | None:
        params = list(rule.parameters())
        theta = torch.cat([p.detach().flatten() for p in params])
        self._continue_or_start(state, theta)
        counted = self.objective.counts(state, length)
        eps = self.sigma * torch.randn(self.num_pairs, theta.numel(), generator=self._perturbation_generator())
        eps = eps.to(theta)
        self._accumulated += eps
        results = []
        for i, particle in enumerate(self._particles):
            sign = 1.0 if i % 2 == 0 else -1.0
            with _perturbed(params, theta + sign * eps[i // 2]):
                results.append(self.objective.unroll(rule, particle, length, differentiable=False))
        losses = torch.stack([r.meta_loss for r in results])
        if not torch.isfinite(losses).all() or not all(r.state.is_finite() for r in results):
            self._particles, self._position = [], None  # the module restarts the task; so do the particles
            return None
        differences = losses[0::2] - losses[1::2]
        gradient = (self._accumulated * differences[:, None]).sum(0) / (2 * self.num_pairs * self.sigma**2)
        backward(torch.dot(torch.cat([p.flatten() for p in params]), gradient))
        self._particles = [r.state for r in results]
        carried = self._particles[0]
        self._position = _position(carried)
        info = {key: torch.stack([r.info[key] for r in results]).mean() for key in results[0].info}
        inner_losses = torch.stack([r.inner_losses for r in results]).mean(0)
        return SegmentEstimate(losses.mean(), carried, inner_losses, info, counted)

    def _continue_or_start(self, state: InnerState, theta: Tensor) -> None:
        """Keep the particles if ``state`` is where they left off (also after a resume), else start all of them
        from ``state`` with no accumulated perturbation."""
        restored, self._restored = self._restored, None
        if restored is not None and restored["position"] == list(_position(state)):
            self._particles = [InnerState.from_state_dict(p, state.params.device, state.task)
                               for p in restored["particles"]]
            self._accumulated = restored["accumulated"].to(theta)
            self._position = _position(state)
        if self._position != _position(state) or len(self._particles) != 2 * self.num_pairs:
            self._particles = [state.copy() for _ in range(2 * self.num_pairs)]
            self._accumulated = torch.zeros(self.num_pairs, theta.numel(), dtype=theta.dtype, device=theta.device)

    def _perturbation_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed + self.stream)
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        saved: dict[str, Any] = {"generator": self._perturbation_generator().get_state()}
        if self._position is not None:
            saved.update(position=list(self._position), particles=[p.state_dict() for p in self._particles],
                         accumulated=self._accumulated.cpu().clone())
        return saved

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._perturbation_generator().set_state(state["generator"])
        self._particles, self._position = [], None
        self._restored = state if "position" in state else None


def _position(state: InnerState) -> Position:
    """Which optimizee ``state`` is (task index and seed) and how far it has trained."""
    return state.task.spec.index, state.task.spec.seed, state.step


@contextmanager
def _perturbed(params: list[Tensor], values: Tensor) -> Iterator[None]:
    """Set the flat ``values`` into ``params`` for the duration of the block, then put the originals back."""
    originals = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values.split([p.numel() for p in params])):
            p.copy_(v.view_as(p))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals):
                p.copy_(original)
