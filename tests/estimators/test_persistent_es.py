"""Persistent ES: unbiased over the whole horizon (against the exact gradient), selectable, resumable."""

from __future__ import annotations

import pytest
import torch

from lightning_l2o.errors import ConfigError
from lightning_l2o.estimators import GradientEstimator, PersistentES, TruncatedBackprop
from lightning_l2o.meta_optimizers import FFMetaOptimizer, PNAMetaOptimizer
from lightning_l2o.tasks import TaskSpec
from lightning_l2o.unroll import InnerState, unroll

SEGMENTS, LENGTH = 3, 4


def _flat_grad(rule: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in rule.parameters()])


def _horizon_estimate(estimator: GradientEstimator, rule: torch.nn.Module, spec: TaskSpec) -> torch.Tensor:
    """The estimator's meta-gradients summed over the task's consecutive segments, divided by their number: an
    estimate of the gradient of the whole horizon's meta-loss."""
    rule.zero_grad()
    state = InnerState.start(spec, rule)
    for _ in range(SEGMENTS):
        state = estimator.estimate(rule, state, LENGTH, lambda loss: loss.backward()).state
    return _flat_grad(rule) / SEGMENTS


@pytest.mark.parametrize("final_fraction", [1.0, 0.5])
def test_pes_agrees_with_the_exact_full_horizon_gradient_where_truncation_does_not(float64, final_fraction):
    """Over 300 independent PES runs the mean estimate is within 4.5 standard errors of the exact gradient of the
    12-step horizon's meta-loss in every coordinate (all its losses, or those of its last half only: there PES
    credits the first segment's perturbations for them); truncated backpropagation over the same 4-step segments is
    not."""
    torch.manual_seed(0)
    rule = FFMetaOptimizer(hidden_dim=4, num_layers=1, lr=0.01).double()
    spec = TaskSpec("quadratic", arch={"dim": 4}, horizon=SEGMENTS * LENGTH, seed=3)
    rule.zero_grad()
    unroll(rule, InnerState.start(spec, rule), SEGMENTS * LENGTH, final_fraction=final_fraction).meta_loss.backward()
    exact = _flat_grad(rule).clone()
    runs = torch.stack([_horizon_estimate(PersistentES(num_pairs=4, sigma=0.01, final_fraction=final_fraction, seed=s),
                                          rule, spec) for s in range(300)])
    standard_error = runs.std(0) / runs.shape[0] ** 0.5
    assert ((runs.mean(0) - exact) / standard_error).abs().max() < 4.5
    truncated = _horizon_estimate(TruncatedBackprop(final_fraction=final_fraction), rule, spec)
    assert ((truncated - exact) / standard_error).abs().max() > 4.5


def test_particles_persist_within_a_task_and_restart_with_a_new_one():
    rule = FFMetaOptimizer(hidden_dim=4, num_layers=1)
    estimator = PersistentES(num_pairs=2)
    spec = TaskSpec("quadratic", arch={"dim": 4}, horizon=8, seed=1)
    first = estimator.estimate(rule, InnerState.start(spec, rule), 4, lambda loss: loss.backward())
    assert first.state.step == 4 and first.inner_losses.shape == (4,)
    assert estimator.state_dict()["accumulated"].shape == (2, sum(p.numel() for p in rule.parameters()))
    second = estimator.estimate(rule, first.state, 4, lambda loss: loss.backward())
    assert second.state.step == 8
    other = estimator.estimate(rule, InnerState.start(spec.with_seed(2), rule), 4, lambda loss: loss.backward())
    assert other.state.step == 4  # a new optimizee: the particles started over from it


@pytest.mark.parametrize("make_rule", [
    pytest.param(lambda: FFMetaOptimizer(hidden_dim=4, num_layers=1), id="ff"),
    pytest.param(lambda: FFMetaOptimizer(hidden_dim=4, num_layers=1, features="adam", adam_lr=1e-2, adam_schedule=True,
                                         schedule_horizon=True), id="ff_with_a_horizon_schedule"),
    pytest.param(lambda: PNAMetaOptimizer(hidden_dim=4, num_layers=2, recurrent=True), id="pna_lstm_with_memory"),
])
def test_the_estimator_state_round_trips_exactly(make_rule):
    rule = make_rule()
    spec = TaskSpec("regression", arch={"inputs": 3}, batch_size=8, horizon=12, seed=1)
    estimator = PersistentES(num_pairs=2)
    state = estimator.estimate(rule, InnerState.start(spec, rule), 4, lambda loss: None).state
    saved, carried = estimator.state_dict(), state.state_dict()
    ahead = estimator.estimate(rule, state, 4, lambda loss: loss.backward())
    grad = _flat_grad(rule).clone()
    rule.zero_grad()
    resumed = PersistentES(num_pairs=2)
    resumed.load_state_dict(saved)
    again = resumed.estimate(rule, InnerState.from_state_dict(carried), 4, lambda loss: loss.backward())
    torch.testing.assert_close(_flat_grad(rule), grad, rtol=0, atol=0)
    torch.testing.assert_close(again.state.params, ahead.state.params, rtol=0, atol=0)


@pytest.mark.parametrize(
    "build, key",
    [(lambda: PersistentES(num_pairs=0), "num_pairs"), (lambda: PersistentES(sigma=0.0), "sigma"),
     (lambda: PersistentES(meta_loss="sum"), "model.estimator.init_args.meta_loss"),
     (lambda: TruncatedBackprop(meta_loss="sum"), "model.estimator.init_args.meta_loss"),
     (lambda: TruncatedBackprop(backprop_window=0), "model.estimator.init_args.backprop_window"),
     (lambda: PersistentES(final_fraction=0.0), "model.estimator.init_args.final_fraction"),
     (lambda: TruncatedBackprop(final_fraction=1.5), "model.estimator.init_args.final_fraction")],
)
def test_bad_values_name_the_key(build, key):
    with pytest.raises(ConfigError, match=key):
        build()
