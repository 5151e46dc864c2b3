"""FF and LSTM meta-optimizers: shapes, the one-step update form, meta-gradients, deployment, the options
(features, progress_features, adam_lr, adam_scale, adam_schedule, schedule_horizon, output_scale), chunking and the
bfloat16 network."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.optim import Optimizer

from lightning_l2o import FFMetaOptimizer, L2OModule, LSTMMetaOptimizer, load_learned_optimizer
from lightning_l2o.checkpoints import build_meta_optimizer, meta_optimizer_config
from lightning_l2o.errors import ConfigError
from lightning_l2o.estimators import TruncatedBackprop
from lightning_l2o.meta_optimizers import Adam, MetaOptimizer, State
from lightning_l2o.meta_optimizers.base import NUM_STEPS_KEY
from lightning_l2o.meta_optimizers.features import HORIZON_POWERS, METZ_TIMESCALES, horizon_features, time_features
from lightning_l2o.meta_optimizers.lstm import gate_weights, lstm_cell
from lightning_l2o.meta_optimizers.per_parameter import PerParameterOptimizer
from lightning_l2o.optim import LearnedOptimizer
from lightning_l2o.params import ParamLayout, ParamSpace
from lightning_l2o.unroll import InnerState, unroll
from tests.conftest import quadratic, tiny_datamodule, tiny_trainer

LAYOUT = ParamLayout.from_tensors([("w", torch.zeros(3, 4)), ("b", torch.zeros(3))])
SPACE = ParamSpace.of_layout(LAYOUT)
RULES = [
    pytest.param(lambda features, **kw: FFMetaOptimizer(features=features, hidden_dim=16, num_layers=2, **kw),
                 id="ff"),
    pytest.param(lambda features, **kw: LSTMMetaOptimizer(features=features, hidden_dim=8, num_layers=2, **kw),
                 id="lstm"),
]
FEATURES = ["kofinas", "metz", "adam"]
OPTIONS = {  # every inductive-bias option, alone and together
    "adam_features": {"features": "adam"},
    "per_tensor_metz": {"features": "metz"},
    "progress": {"features": "kofinas", "progress_features": True},
    "adam_progress": {"features": "adam", "progress_features": True},
    "adam_correction": {"features": "kofinas", "adam_lr": 1e-2},
    "adam_scale": {"features": "kofinas", "adam_lr": 1e-2, "adam_scale": True},
    "adam_fast_beta2": {"features": "kofinas", "adam_lr": 1e-2, "adam_fast_beta2": 0.99},
    "adam_schedule": {"features": "kofinas", "adam_lr": 1e-2, "adam_schedule": True},
    "schedule_horizon": {"features": "kofinas", "adam_lr": 1e-2, "adam_schedule": True, "schedule_horizon": True},
    "shape": {"features": "adam", "shape_features": True},
    "all": {"features": "adam", "progress_features": True, "shape_features": True, "adam_lr": 1e-2, "adam_scale": True,
            "adam_fast_beta2": 0.99, "adam_schedule": True, "schedule_horizon": True},
    "output_scale": {"features": "kofinas", "output_scale": 0.01},
}
FEATURE_OPTIONS = {"kofinas": {"features": "kofinas"}, **OPTIONS}
ADAM_OPTIONS = [  # what the network adds to the Adam step
    pytest.param({}, id="correction"),
    pytest.param({"adam_scale": True}, id="correction_and_scale"),
    pytest.param({"adam_fast_beta2": 0.99}, id="correction_and_fast_beta2"),
    pytest.param({"adam_scale": True, "adam_fast_beta2": 0.99}, id="correction_scale_and_fast_beta2"),
    pytest.param({"adam_scale": True, "shape_features": True}, id="correction_and_scale_with_shape_features"),
    pytest.param({"adam_schedule": True}, id="correction_and_schedule"),
    pytest.param({"adam_scale": True, "adam_schedule": True}, id="correction_scale_and_schedule"),
    pytest.param({"adam_schedule": True, "schedule_horizon": True}, id="correction_and_schedule_with_horizon"),
]


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def train_small_model(make_optimizer: Callable[[nn.Module], Optimizer], steps: int = 10,
                      model: nn.Module | None = None) -> tuple[Tensor, list[float]]:
    """Flat parameters ``(n,)`` of ``model`` (default :func:`small_mlp`) after ``steps`` full-batch steps of the
    optimizer ``make_optimizer(model)`` on a fixed regression batch, and the losses before each step."""
    model = small_mlp() if model is None else model
    optimizer = make_optimizer(model)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, model[0].in_features, generator=generator)
    y = torch.randn(32, model[-1].out_features, generator=generator)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    return ParamLayout.flatten([p.detach() for p in model.parameters()]), losses


@torch.no_grad()
def run_rule(rule: MetaOptimizer, space: ParamSpace, params: Tensor, grads: list[Tensor]) -> tuple[Tensor, State]:
    """``params`` ``(n,)`` and ``rule``'s state after one step per gradient of ``grads``, from a fresh state."""
    state = rule.start_state(params, space, len(grads))
    for g in grads:
        params, state, _ = rule(params, g, torch.tensor(1.0), state, space, rule.lr)
    return params, state


def trained_looking(rule: PerParameterOptimizer) -> PerParameterOptimizer:
    """``rule`` with a random output layer (with ``adam_lr`` it starts at zero and would hide the network)."""
    with torch.no_grad():
        rule.output_layer.weight.normal_()
        rule.output_layer.bias.normal_(0, 0.1)
    return rule


def check_untrained_adam_correction_is_adam(rule: PerParameterOptimizer,
                                            model: Callable[[], nn.Module] = small_mlp) -> None:
    """``rule`` (built with ``adam_lr=1e-2``, untrained) deployed for 10 steps on ``model()``: bit for bit the
    project's Adam rule, and ``torch.optim.Adam`` to 1e-6 (the Adam rule's bias corrections are float32, torch's
    float64)."""
    assert not rule.output_layer.weight.any() and not rule.output_layer.bias.any()
    learned, _ = train_small_model(lambda m: LearnedOptimizer(m, rule, num_steps=10), model=model())
    reference, _ = train_small_model(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2), model=model())
    adam_rule, _ = train_small_model(lambda m: LearnedOptimizer(m, Adam(lr=1e-2)), model=model())
    assert torch.equal(learned, adam_rule)
    torch.testing.assert_close(learned, reference, rtol=0, atol=1e-6)


def check_zero_output_layer_still_learns(rule: PerParameterOptimizer, space: ParamSpace, params: Tensor) -> None:
    """For ``rule`` with ``adam_lr`` (output layer zero): the meta-gradient of 2 unrolled steps reaches the output
    layer, one step of it makes the rule differ from Adam, and then the meta-gradient reaches every weight."""
    grads = [torch.randn_like(params) for _ in range(2)]

    def update_and_meta_grads() -> tuple[Tensor, dict[str, Tensor]]:
        rule.zero_grad()
        new, state = params, rule.start_state(params, space, len(grads))
        for g in grads:
            new, state, _ = rule(new, g, torch.tensor(1.0), state, space, rule.lr)
        new.square().sum().backward()
        return new.detach(), {name: w.grad.clone() for name, w in rule.named_parameters()}

    adam_update, meta_grads = update_and_meta_grads()
    assert rule.output_layer.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for name, weight in rule.named_parameters():
            weight -= meta_grads[name]
    learned_update, meta_grads = update_and_meta_grads()
    assert not torch.equal(learned_update, adam_update)
    assert all(g.abs().sum() > 0 for g in meta_grads.values()), [n for n, g in meta_grads.items() if not g.any()]


def check_round_trip_and_deploy(rule: PerParameterOptimizer, model: Callable[[], nn.Module] = small_mlp) -> None:
    """``rule`` rebuilt from its checkpoint config with its weights deploys like ``rule``: 5 finite steps."""
    saved = meta_optimizer_config(rule)
    rebuilt = build_meta_optimizer(saved)
    rebuilt.load_state_dict(rule.state_dict())
    assert meta_optimizer_config(rebuilt) == saved
    before = ParamLayout.flatten([p.detach() for p in model().parameters()])
    results = [train_small_model(lambda m, r=r: LearnedOptimizer(m, r, num_steps=5), steps=5, model=model())[0]
               for r in (rule, rebuilt)]
    assert torch.equal(results[0], results[1])
    assert torch.isfinite(results[0]).all() and not torch.equal(results[0], before)


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("make", RULES)
def test_one_step_is_theta_plus_lr_a_exp_scaled_b(make, features):
    rule = make(features)
    params, grads = torch.randn(LAYOUT.total), torch.randn(LAYOUT.total)
    state = rule.init_state(params, SPACE)
    new_params, new_state, info = rule(params, grads, torch.tensor(1.0), state, SPACE, rule.lr)
    feats, _ = rule.features(params, grads, state, SPACE)
    outputs, _ = rule.network_step(feats, state, SPACE)
    assert outputs.shape == (LAYOUT.total, 2)
    expected = params + rule.lr * outputs[:, 0] * torch.exp(rule.exp_scale * outputs[:, 1])
    torch.testing.assert_close(new_params, expected)
    assert set(new_state) == set(state) and info["update_rms"].dim() == 0


def test_defaults_follow_the_papers():
    ff, lstm = FFMetaOptimizer(), LSTMMetaOptimizer()
    assert (ff.lr, ff.exp_scale, lstm.lr) == (0.01, 0.01, 0.01)
    assert [m.out_features for m in ff.network.net if isinstance(m, nn.Linear)] == [64, 64, 2]
    assert ff.network.net[0].in_features == 14 and len(lstm.network.cells) == 1
    assert lstm.network.cells[0].hidden_size == 32
    assert FFMetaOptimizer(features="metz").lr == 0.001
    assert FFMetaOptimizer(features="metz").network.net[0].in_features == 18


def test_lstm_state_is_per_coordinate_and_evolves():
    rule = LSTMMetaOptimizer(hidden_dim=8, num_layers=2)
    params = torch.randn(LAYOUT.total)
    state = rule.init_state(params, SPACE)
    assert state["lstm_h"].shape == state["lstm_c"].shape == (2, LAYOUT.total, 8)
    _, state2, _ = rule(params, torch.randn(LAYOUT.total), torch.tensor(1.0), state, SPACE, rule.lr)
    assert not torch.equal(state2["lstm_h"], state["lstm_h"])


def test_lstm_cell_from_one_product_equals_nn_lstm_cell_in_value_and_every_gradient():
    torch.manual_seed(0)
    cell = nn.LSTMCell(6, 5)
    inputs = [torch.randn(40, 6), torch.randn(40, 5), torch.randn(40, 5)]

    def values_and_gradients(step):
        leaves = [t.clone().requires_grad_() for t in inputs]
        h, c = step(*leaves)
        weights = torch.linspace(-1, 1, h.numel()).view_as(h)
        grads = torch.autograd.grad((h * weights).sum() + (c * weights).sum(), [*leaves, *cell.parameters()])
        return [h.detach(), c.detach(), *grads]

    ours = values_and_gradients(lambda x, h, c: lstm_cell(x, h, c, *gate_weights(cell)))
    for got, expected in zip(ours, values_and_gradients(lambda x, h, c: cell(x, (h, c))), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("make", RULES)
def test_unrolled_meta_gradient_reaches_every_weight(make):
    rule = make("kofinas")
    result = unroll(rule, InnerState.start(quadratic(), rule), 4, "lookahead", "same")
    result.meta_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rule.parameters())
    assert sum(float(p.grad.abs().sum()) for p in rule.parameters()) > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"features": "lion"}, "unknown feature set"),
    ({"hidden_dim": 0}, "hidden_dim must be > 0"),
    ({"adam_lr": 0.0}, "adam_lr must be > 0, got 0.0; give the Adam step's learning rate"),
    ({"output_scale": -1.0}, "output_scale must be > 0, got -1.0; e.g. 0.01"),
    ({"adam_lr": 1e-2, "output_scale": 0.01}, "remove output_scale or set adam_lr: null"),
    ({"adam_scale": True}, "adam_scale rescales the Adam step, and there is none: set adam_lr"),
    ({"adam_schedule": True}, "adam_schedule rescales the Adam step, and there is none: set adam_lr"),
    ({"adam_lr": 1e-2, "schedule_horizon": True}, "there is none: set adam_schedule: true"),
    ({"adam_fast_beta2": 0.99}, "adam_fast_beta2 reweighs the Adam step's denominator, and there is none: set adam_lr"),
    ({"adam_lr": 1e-2, "adam_fast_beta2": 1.0}, r"adam_fast_beta2 must be in \[0, 1\), got 1.0"),
    ({"adam_lr": 1e-2, "adam_beta2": -0.1}, r"adam_beta2 must be in \[0, 1\), got -0.1"),
    ({"features": "metz", "progress_features": True}, "set progress_features: false"),
    ({"chunk_size": 0}, "chunk_size must be a positive integer, got 0; e.g. 16384"),
    ({"chunk_size": 1.5}, "chunk_size must be a positive integer, got 1.5"),
    ({"network_dtype": "float16"}, "network_dtype must be one of float32, bfloat16, got 'float16'"),
    ({"adam_lx": 1e-2}, (r"FFMetaOptimizer: unknown option\(s\) adam_lx; the options are adam_beta2, .*adam_lr, "
                        r".*hidden_dim")),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FFMetaOptimizer(**kwargs)


def test_options_set_the_input_width_the_state_and_the_recorded_config():
    assert FFMetaOptimizer(features="adam").network.net[0].in_features == 6
    assert FFMetaOptimizer(features="adam").lr == FFMetaOptimizer(features="adam").exp_scale == 0.001
    assert FFMetaOptimizer(progress_features=True).network.net[0].in_features == 14 + 11
    assert LSTMMetaOptimizer(features="adam", progress_features=True).network.cells[0].input_size == 6 + 11
    params = torch.randn(LAYOUT.total)
    state = FFMetaOptimizer(progress_features=True, adam_lr=1e-2).init_state(params, SPACE)
    assert set(state) == {"momenta", "progress_step", "adam_exp_avg", "adam_exp_avg_sq", "adam_step"}
    assert FFMetaOptimizer().config == {"features": "kofinas", "hidden_dim": 64, "num_layers": 2, "lr": 0.01,
                                        "exp_scale": 0.01, "progress_features": False, "adam_lr": None,
                                        "output_scale": 1.0, "chunk_size": 16384, "network_dtype": "float32",
                                        "adam_scale": False, "adam_beta2": 0.999, "adam_fast_beta2": None,
                                        "shape_features": False, "adam_schedule": False, "schedule_horizon": False}
    assert FFMetaOptimizer(features="adam", shape_features=True).network.net[0].in_features == 6 + 2
    assert FFMetaOptimizer(adam_lr=1e-2, adam_scale=True).output_layer.out_features == 3
    assert FFMetaOptimizer(adam_lr=1e-2, adam_scale=True, adam_fast_beta2=0.99).output_layer.out_features == 4
    state = FFMetaOptimizer(adam_lr=1e-2, adam_fast_beta2=0.99).init_state(params, SPACE)
    assert set(state) == {"momenta", "adam_exp_avg", "adam_exp_avg_sq", "adam_step", "adam_fast_exp_avg_sq"}


@pytest.mark.parametrize("adam_options", ADAM_OPTIONS)
@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("make", RULES)
def test_untrained_adam_correction_is_torch_adam(make, features, adam_options):
    check_untrained_adam_correction_is_adam(make(features, adam_lr=1e-2, **adam_options))


@pytest.mark.parametrize("adam_options", ADAM_OPTIONS)
@pytest.mark.parametrize("make", RULES)
def test_zero_output_layer_of_the_adam_correction_still_learns(make, adam_options):
    check_zero_output_layer_still_learns(make("adam", progress_features=True, adam_lr=1e-2, **adam_options),
                                         SPACE, torch.randn(LAYOUT.total))


@pytest.mark.parametrize("make", RULES)
def test_adam_scale_multiplies_each_tensors_adam_step_by_ten_to_the_tanh_of_its_mean_output(make):
    params, grads = torch.randn(LAYOUT.total), torch.randn(LAYOUT.total)
    adam = make("adam", adam_lr=1e-2)
    adam_step = adam(params, grads, torch.tensor(1.0), adam.init_state(params, SPACE), SPACE, adam.lr)[0] - params
    rule = make("adam", adam_lr=1e-2, adam_scale=True)
    with torch.no_grad():
        rule.output_layer.bias[2] = 0.5  # a and b stay zero: no learned term, every coordinate's s is 0.5
    new, _, info = rule(params, grads, torch.tensor(1.0), rule.init_state(params, SPACE), SPACE, rule.lr)
    torch.testing.assert_close(new - params, 10 ** math.tanh(0.5) * adam_step)
    torch.testing.assert_close(info["adam_scale"], torch.tensor(10 ** math.tanh(0.5)))
    with torch.no_grad():
        rule.output_layer.weight[2].normal_()  # s differs from coordinate to coordinate: its mean per tensor counts
    ratio = (rule(params, grads, torch.tensor(1.0), rule.init_state(params, SPACE), SPACE, rule.lr)[0] - params) / adam_step
    for segment in range(len(SPACE.segment_sizes)):
        in_tensor = ratio[SPACE.segment_ids == segment]
        torch.testing.assert_close(in_tensor, in_tensor[0].expand_as(in_tensor))
    assert not torch.allclose(ratio, ratio[0].expand_as(ratio))


@pytest.mark.parametrize("make", RULES)
def test_adam_schedule_multiplies_every_tensors_adam_step_by_ten_to_the_tanh_of_a_function_of_the_step(make):
    params, grads = torch.randn(LAYOUT.total), torch.randn(LAYOUT.total)
    adam, rule = make("adam", adam_lr=1e-2), make("adam", adam_lr=1e-2, adam_schedule=True)
    assert rule.schedule.in_features == len(METZ_TIMESCALES)
    with torch.no_grad():
        rule.schedule.weight.normal_()
        rule.schedule.bias.fill_(0.3)
    adam_state, state, new = adam.init_state(params, SPACE), rule.init_state(params, SPACE), params
    for step in range(1, 4):  # the same moments, so the same Adam step; the factor changes with the step
        adam_new, adam_state, _ = adam(new, grads, torch.tensor(1.0), adam_state, SPACE, adam.lr)
        rule_new, state, info = rule(new, grads, torch.tensor(1.0), state, SPACE, rule.lr)
        expected = 10 ** torch.tanh(rule.schedule(time_features(torch.tensor(float(step))))).detach()
        torch.testing.assert_close((rule_new - new).detach(), expected * (adam_new - new))
        torch.testing.assert_close(info["adam_schedule"], expected[0])
        new = adam_new
    assert not torch.equal(time_features(torch.tensor(1.0)), time_features(torch.tensor(3.0)))


@pytest.mark.parametrize("make", RULES)
def test_schedule_horizon_feeds_the_schedule_the_progress_through_the_run_and_holds_it_at_one_past_the_end(make):
    params, grads = torch.randn(LAYOUT.total), torch.randn(LAYOUT.total)
    adam, rule = make("adam", adam_lr=1e-2), make("adam", adam_lr=1e-2, adam_schedule=True, schedule_horizon=True)
    assert rule.uses_horizon and rule.schedule.in_features == len(METZ_TIMESCALES) + len(HORIZON_POWERS)
    with torch.no_grad():
        rule.schedule.weight.zero_()
        rule.schedule.weight[0, len(METZ_TIMESCALES):] = torch.tensor([0.0, 0.0, 0.0, -2.0])  # -2 p^4: an anneal
    num_steps = 4
    adam_state, state, new = adam.init_state(params, SPACE), rule.start_state(params, SPACE, num_steps), params
    assert state[NUM_STEPS_KEY] == num_steps
    factors = []
    for _ in range(num_steps + 2):  # past the end the progress stays at 1
        adam_new, adam_state, _ = adam(new, grads, torch.tensor(1.0), adam_state, SPACE, adam.lr)
        rule_new, state, info = rule(new, grads, torch.tensor(1.0), state, SPACE, rule.lr)
        factors.append(float(info["adam_schedule"]))
        torch.testing.assert_close((rule_new - new).detach(), info["adam_schedule"] * (adam_new - new))
        assert state[NUM_STEPS_KEY] == num_steps
        new = adam_new
    expected = [10 ** math.tanh(-2 * min(t / num_steps, 1.0) ** 4) for t in range(1, num_steps + 3)]
    assert factors == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(horizon_features(torch.tensor(2.0), torch.tensor(4.0)),
                               torch.tensor([0.5, 0.25, 0.125, 0.0625]))


@pytest.mark.parametrize("make", RULES)
def test_a_rule_that_reads_the_progress_refuses_to_start_without_the_runs_number_of_steps(make):
    rule = make("adam", adam_lr=1e-2, adam_schedule=True, schedule_horizon=True)
    with pytest.raises(ConfigError, match="needs the run's number of steps T: give num_steps"):
        rule.start_state(torch.zeros(LAYOUT.total), SPACE)
    with pytest.raises(ConfigError, match=r"give num_steps, the number of optimizer steps the run will take"):
        LearnedOptimizer(small_mlp(), rule)
    params = torch.zeros(LAYOUT.total)
    with pytest.raises(ConfigError, match=r"its state has no 'num_steps': start the state with start_state"):
        rule(params, torch.ones_like(params), torch.tensor(1.0), rule.init_state(params, SPACE), SPACE, rule.lr)
    _, losses = train_small_model(lambda model: LearnedOptimizer(model, rule, num_steps=20), steps=20)
    assert losses[-1] < losses[0]
    assert NUM_STEPS_KEY not in make("adam", adam_lr=1e-2, adam_schedule=True).start_state(torch.zeros(3), SPACE)


@pytest.mark.parametrize("options", [{"features": "adam"}, {"features": "kofinas", "adam_lr": 1e-2}],
                         ids=["adam_features", "adam_correction"])
@pytest.mark.parametrize("make", RULES)
def test_meta_gradients_stay_finite_where_a_gradient_is_exactly_zero(make, options):
    rule = make(**options)
    with torch.no_grad():
        rule.output_layer.weight.normal_()  # a trained correction, not a zero one
    params, mask = torch.randn(LAYOUT.total), (torch.arange(LAYOUT.total) % 3 > 0).float()
    state = rule.init_state(params, SPACE)
    for _ in range(3):  # the loss sum(mask * theta^2): a third of the coordinates never get a gradient
        params, state, _ = rule(params, 2 * mask * params, torch.tensor(0.0), state, SPACE, rule.lr)
    params.square().sum().backward()
    assert all(torch.isfinite(w.grad).all() for w in rule.parameters())


@pytest.mark.parametrize("make", RULES)
def test_the_callers_lr_scales_the_adam_step_like_the_learned_term(make):
    rule = make("kofinas", adam_lr=1e-2)
    params, grads = torch.randn(LAYOUT.total), torch.randn(LAYOUT.total)
    state = rule.init_state(params, SPACE)
    steps = {lr: rule(params, grads, torch.tensor(1.0), state, SPACE, lr)[0] - params for lr in (rule.lr, rule.lr / 2)}
    torch.testing.assert_close(steps[rule.lr / 2], steps[rule.lr] / 2)
    assert torch.equal(rule(params, grads, torch.tensor(1.0), state, SPACE, 0.0)[0], params)


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("make", RULES)
def test_output_scale_shrinks_the_first_update_proportionally(make, features):
    params, grads = torch.randn(LAYOUT.total), torch.randn(LAYOUT.total)
    rms = {}
    for scale in (1.0, 0.01):
        torch.manual_seed(0)
        rule = make(features, output_scale=scale)
        _, _, info = rule(params, grads, torch.tensor(1.0), rule.init_state(params, SPACE), SPACE, rule.lr)
        rms[scale] = info["update_rms"].item()
    assert rms[0.01] / rms[1.0] == pytest.approx(0.01, rel=0.05)  # a scales exactly, exp(exp_scale b) nearly not


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("make", RULES)
def test_a_random_draw_with_a_small_output_scale_stays_finite_for_100_steps(make, features):
    optimizers = []

    def build(model: nn.Module) -> LearnedOptimizer:
        optimizers.append(LearnedOptimizer(model, make(features, output_scale=0.01)))
        return optimizers[-1]

    params, losses = train_small_model(build, steps=100)
    assert torch.isfinite(params).all() and optimizers[0].nonfinite_steps == 0
    assert max(losses) < 1.5 * losses[0]


@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("make", RULES)
def test_every_option_round_trips_through_a_checkpoint_config_and_deploys(make, options):
    rule = make(**options)
    assert all(rule.config[key] == value for key, value in options.items())
    check_round_trip_and_deploy(rule)


@pytest.mark.parametrize("options", [{}, OPTIONS["all"]], ids=["default", "all_options"])
@pytest.mark.parametrize("cls", [FFMetaOptimizer, LSTMMetaOptimizer])
def test_trained_rule_deploys_as_a_torch_optimizer_from_its_checkpoint(tmp_path, cls, options):
    module = L2OModule(cls(hidden_dim=8, num_layers=1, **options), TruncatedBackprop("lookahead"), outer_lr=1e-2)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, tiny_datamodule())
    trainer.save_checkpoint(tmp_path / "rule.ckpt")
    model = nn.Linear(5, 2)
    optimizer = load_learned_optimizer(tmp_path / "rule.ckpt", model.parameters(), num_steps=3)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 5)).square().mean().backward()
        optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    saved = optimizer.update_rule.state_dict()
    for key, value in module.meta_optimizer.state_dict().items():
        torch.testing.assert_close(saved[key], value)
    assert optimizer.update_rule.output_layer.weight.any()  # meta-training moved even a zero-initialised one


@pytest.mark.parametrize("chunk_size", [4, 64], ids=["n_not_a_multiple_of_the_chunk", "n_below_one_chunk"])
@pytest.mark.parametrize("options", list(FEATURE_OPTIONS.values()), ids=list(FEATURE_OPTIONS))
@pytest.mark.parametrize("make", RULES)
def test_chunked_steps_equal_the_unchunked_ones(make, options, chunk_size):
    """Three steps (the LSTM's state carried chunk by chunk): the same values, up to the BLAS's summation order
    inside the network's dot products, which it may change with a matmul's number of rows (1 ulp)."""
    whole = trained_looking(make(**options, chunk_size=LAYOUT.total))
    params = torch.randn(LAYOUT.total)
    grads = [torch.randn_like(params) for _ in range(3)]  # 15 coordinates: chunks of 4 cut tensor w (12) in three
    expected, expected_state = run_rule(whole, SPACE, params, grads)
    result, state = run_rule(whole.with_config(chunk_size=chunk_size), SPACE, params, grads)
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)
    assert set(state) == set(expected_state)
    for key, value in expected_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", RULES)
def test_the_meta_gradient_through_chunks_equals_the_unchunked_one(make):
    rules = [trained_looking(make("adam", progress_features=True, adam_lr=1e-2, chunk_size=5))]
    rules.append(rules[0].with_config(chunk_size=2))  # the quadratic's 5 coordinates in 3 chunks
    results = []
    for rule in rules:
        meta_loss = unroll(rule, InnerState.start(quadratic(), rule), 3, "lookahead", "same").meta_loss
        results.append((meta_loss, torch.autograd.grad(meta_loss, list(rule.parameters()))))
    (loss, grads), (chunked_loss, chunked_grads) = results
    assert torch.equal(chunked_loss, loss)
    for chunked, whole in zip(chunked_grads, grads, strict=True):
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: FFMetaOptimizer(features="adam", hidden_dim=4, num_layers=1, chunk_size=2), id="ff"),
    pytest.param(lambda: LSTMMetaOptimizer(features="adam", hidden_dim=2, chunk_size=2), id="lstm"),
])
def test_the_meta_gradient_through_chunks_matches_central_differences(float64, make):
    """A 3-step unroll (second order included) over 3 chunks: the autograd meta-gradient's derivative along random
    directions of the rule's weights equals central differences of the meta-loss."""
    rule = trained_looking(make())
    weights = list(rule.parameters())

    def meta_loss(at: Tensor) -> Tensor:
        vector_to_parameters(at, weights)
        return unroll(rule, InnerState.start(quadratic(), rule), 3, "train").meta_loss

    start = parameters_to_vector(weights).detach().clone()
    gradient = parameters_to_vector(torch.autograd.grad(meta_loss(start), weights))
    eps = 1e-6
    for direction in torch.randn(3, len(start)):
        numeric = (meta_loss(start + eps * direction).item() - meta_loss(start - eps * direction).item()) / (2 * eps)
        assert float(gradient @ direction) == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("make", RULES)
def test_a_bfloat16_network_gives_an_update_within_a_few_percent_of_float32(make):
    rule = trained_looking(make("kofinas", chunk_size=4))
    params = torch.randn(LAYOUT.total)
    grads = [torch.randn_like(params) for _ in range(3)]
    bf16 = rule.with_config(network_dtype="bfloat16")
    (expected, _), (result, state) = run_rule(rule, SPACE, params, grads), run_rule(bf16, SPACE, params, grads)
    relative = ((result - params) - (expected - params)).norm() / (expected - params).norm()
    assert 0 < relative < 0.05
    assert all(v.dtype == torch.float32 for v in state.values()) and result.dtype == torch.float32
    assert bf16.config["network_dtype"] == "bfloat16" and rule.config["network_dtype"] == "float32"


@pytest.mark.parametrize("make", RULES)
def test_adam_fast_beta2_moves_adams_denominator_to_the_fast_second_moment_per_coordinate(make):
    grads = [torch.randn(LAYOUT.total) for _ in range(3)]

    def adam_step(rule: PerParameterOptimizer) -> Tensor:
        """The last of 3 steps of ``rule`` from zero parameters on ``grads``."""
        params, state = torch.zeros(LAYOUT.total), rule.init_state(torch.zeros(LAYOUT.total), SPACE)
        for g in grads:
            new, state, info = rule(params, g, torch.tensor(1.0), state, SPACE, rule.lr)
            step, params = new - params, new
        return step.detach(), info

    slow, _ = adam_step(make("adam", adam_lr=1e-2))
    fast, _ = adam_step(make("adam", adam_lr=1e-2, adam_beta2=0.9))
    rule = make("adam", adam_lr=1e-2, adam_fast_beta2=0.9)
    with torch.no_grad():
        rule.output_layer.bias[2] = 20.0  # tanh(r) = 1 to float precision: the fast moment's denominator
    step, info = adam_step(rule)
    torch.testing.assert_close(step, fast)
    assert not torch.allclose(fast, slow)
    torch.testing.assert_close(info["adam_fast_weight"], torch.tensor(1.0))
    with torch.no_grad():
        rule.output_layer.bias[2] = math.atanh(0.5)  # halfway: the geometric mean of the two denominators
    step, _ = adam_step(rule)
    torch.testing.assert_close(step, (slow * fast).sqrt() * slow.sign(), rtol=1e-4, atol=1e-9)
    with torch.no_grad():
        rule.output_layer.weight[2].normal_()  # r differs from coordinate to coordinate
    step, _ = adam_step(rule)
    ratio = step / slow
    assert not torch.allclose(ratio, ratio[0].expand_as(ratio))
