"""FF and LSTM meta-optimizers: shapes, the one-step update form, meta-gradients and deployment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_l2o import FFMetaOptimizer, L2OModule, LSTMMetaOptimizer, load_learned_optimizer
from lightning_l2o.errors import ConfigError
from lightning_l2o.estimators import TruncatedBackprop
from lightning_l2o.params import ParamLayout, ParamSpace
from lightning_l2o.unroll import InnerState, unroll
from tests.conftest import quadratic, tiny_datamodule, tiny_trainer

LAYOUT = ParamLayout.from_tensors([("w", torch.zeros(3, 4)), ("b", torch.zeros(3))])
SPACE = ParamSpace.of_layout(LAYOUT)
RULES = [
    pytest.param(lambda f: FFMetaOptimizer(features=f, hidden_dim=16, num_layers=2), id="ff"),
    pytest.param(lambda f: LSTMMetaOptimizer(features=f, hidden_dim=8, num_layers=2), id="lstm"),
]


@pytest.mark.parametrize("features", ["kofinas", "metz"])
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


@pytest.mark.parametrize("make", RULES)
def test_unrolled_meta_gradient_reaches_every_weight(make):
    rule = make("kofinas")
    result = unroll(rule, InnerState.start(quadratic(), rule), 4, "lookahead", "same")
    result.meta_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in rule.parameters())
    assert sum(float(p.grad.abs().sum()) for p in rule.parameters()) > 0


@pytest.mark.parametrize("kwargs, message", [({"features": "adam"}, "unknown feature set"),
                                             ({"hidden_dim": 0}, "hidden_dim must be > 0")])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FFMetaOptimizer(**kwargs)


@pytest.mark.parametrize("cls", [FFMetaOptimizer, LSTMMetaOptimizer])
def test_trained_rule_deploys_as_a_torch_optimizer_from_its_checkpoint(tmp_path, cls):
    module = L2OModule(cls(hidden_dim=8, num_layers=1), TruncatedBackprop("lookahead"), outer_lr=1e-2)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, tiny_datamodule())
    trainer.save_checkpoint(tmp_path / "rule.ckpt")
    model = nn.Linear(5, 2)
    optimizer = load_learned_optimizer(tmp_path / "rule.ckpt", model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 5)).square().mean().backward()
        optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    saved = optimizer.update_rule.state_dict()
    for key, value in module.meta_optimizer.state_dict().items():
        torch.testing.assert_close(saved[key], value)
