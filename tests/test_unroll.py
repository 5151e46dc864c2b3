import pytest
import torch

from lightning_l2o.meta_optimizers import FFMetaOptimizer, Opt2Vec
from lightning_l2o.meta_optimizers.base import NUM_STEPS_KEY
from lightning_l2o.tasks import TaskSpec
from lightning_l2o.unroll import InnerState, unroll
from tests.conftest import quadratic


def _meta_loss(rule, spec, steps, **kwargs):
    return unroll(rule, InnerState.start(spec, rule), steps, **kwargs).meta_loss


@pytest.mark.parametrize("kwargs", [{"meta_loss": "train"}, {"meta_loss": "lookahead", "lookahead_batch": "fresh"},
                                    {"meta_loss": "lookahead", "lookahead_batch": "same"}])
def test_unrolled_meta_gradient_matches_finite_differences(float64, kwargs):
    """The autograd meta-gradient through a 4-step unroll (second order included) equals central differences."""
    torch.manual_seed(0)
    rule = Opt2Vec(base_lr=0.02, embedding_dim=3, history_length=2, hidden_dim=4).double()
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0, 0.5)
    spec = TaskSpec("regression", arch={"inputs": 3, "num_train": 32}, batch_size=8, seed=5)
    loss = _meta_loss(rule, spec, 4, **kwargs)
    grads = torch.autograd.grad(loss, list(rule.parameters()))
    eps = 1e-6
    for param, grad in zip(rule.parameters(), grads):
        flat, numeric = param.data.view(-1), torch.zeros(param.numel())
        for i in range(param.numel()):
            original = flat[i].item()
            flat[i] = original + eps
            up = _meta_loss(rule, spec, 4, **kwargs).item()
            flat[i] = original - eps
            down = _meta_loss(rule, spec, 4, **kwargs).item()
            flat[i] = original
            numeric[i] = (up - down) / (2 * eps)
        assert torch.allclose(grad.view(-1), numeric, rtol=1e-5, atol=1e-8), (grad.view(-1), numeric)


def test_unroll_carries_state_and_counts_steps():
    rule = Opt2Vec()
    state = InnerState.start(TaskSpec("quadratic", arch={"dim": 5}), rule)
    result = unroll(rule, state, 3)
    assert result.state.step == 3 and result.inner_losses.shape == (3,)
    assert result.meta_loss.requires_grad
    assert set(result.info) == {"lr_scale", "momentum", "lr"}
    detached = result.state.detached()
    assert not detached.params.requires_grad and detached.step == 3
    more = unroll(rule, detached, 2)
    assert more.state.step == 5


def test_a_rule_that_reads_the_progress_starts_with_the_tasks_horizon_in_its_state():
    rule = FFMetaOptimizer(features="adam", hidden_dim=4, num_layers=1, adam_lr=1e-2, adam_schedule=True,
                           schedule_horizon=True)
    state = InnerState.start(quadratic(37), rule)
    assert state.opt_state[NUM_STEPS_KEY] == 37
    assert NUM_STEPS_KEY in unroll(rule, state, 3, "train").state.opt_state


def test_inner_state_round_trips_through_a_state_dict():
    rule = Opt2Vec()
    state = unroll(rule, InnerState.start(TaskSpec("regression", seed=4), rule), 3).state.detached()
    restored = InnerState.from_state_dict(state.state_dict())
    a, b = unroll(rule, state, 2), unroll(rule, restored, 2)
    assert torch.equal(a.meta_loss, b.meta_loss) and torch.equal(a.state.params, b.state.params)


def test_normalised_losses_are_divided_by_the_loss_at_initialisation_across_segments():
    rule = Opt2Vec()
    spec = TaskSpec("quadratic", arch={"dim": 5}, seed=4)
    start = InnerState.start(spec, rule)
    initial = float(start.task.loss(start.params, ()))
    plain = unroll(rule, start.copy(), 3)
    normalised = unroll(rule, start.copy(), 3, normalise_loss=True)
    assert normalised.state.initial_loss == pytest.approx(initial)
    torch.testing.assert_close(normalised.meta_loss, plain.meta_loss / initial)
    carried = InnerState.from_state_dict(normalised.state.detached().state_dict())
    assert carried.initial_loss == pytest.approx(initial)
    later_plain = unroll(rule, plain.state.detached(), 2)
    later = unroll(rule, carried, 2, normalise_loss=True)
    torch.testing.assert_close(later.meta_loss, later_plain.meta_loss / initial)


def test_final_fraction_counts_only_the_last_part_of_the_horizon():
    """Horizon 8, last quarter: a segment over steps 1-4 counts nothing; one over steps 5-8 counts the losses after
    steps 7 and 8, each weighing a quarter (the quadratic's loss needs no batch, so segments can be split)."""
    rule = Opt2Vec()
    start = InnerState.start(TaskSpec("quadratic", arch={"dim": 5}, horizon=8, seed=4), rule)
    early = unroll(rule, start, 4, final_fraction=0.25)
    assert early.meta_loss.item() == 0.0
    at_4 = early.state.detached()
    late = unroll(rule, at_4, 4, final_fraction=0.25)
    at_6 = unroll(rule, at_4, 2).state.detached()
    torch.testing.assert_close(late.meta_loss, unroll(rule, at_6, 2).meta_loss / 2)
