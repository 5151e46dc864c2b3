import math

import pytest
import torch

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers import Opt2Vec, SGDMomentum, TinyOpt2VecNetwork
from lightning_l2o.params import ParamLayout, ParamSpace

LAYOUT = ParamLayout(("x",), (torch.Size([8]),))
SPACE = ParamSpace.of_layout(LAYOUT)


def test_network_shapes():
    net = TinyOpt2VecNetwork(history_length=5, hidden_dim=32, embedding_dim=16)
    assert net(torch.randn(4, 5, 3)).shape == (4, 16)
    assert net(torch.randn(5, 3)).shape == (16,)
    assert sum(p.numel() for p in net.parameters()) == 15 * 32 + 32 + 32 * 16 + 16


def test_state_info_shapes_and_history():
    rule = Opt2Vec(base_lr=0.01, embedding_dim=16, history_length=5)
    params = torch.randn(8)
    state = rule.init_state(params, SPACE)
    new, state, info = rule(params, torch.ones(8), torch.tensor(4.0), state, SPACE, 0.01)
    assert new.shape == (8,) and info["embedding"].shape == (16,)
    assert state["history"].shape == (5, 3)
    # The first step fills the whole history with its entry [log loss, log |g|, log lr].
    expected = torch.tensor([math.log(4.0), math.log(math.sqrt(8)), math.log(0.01)])
    assert torch.allclose(state["history"], expected.expand(5, 3), atol=1e-5)
    _, state, _ = rule(new, 2 * torch.ones(8), torch.tensor(1.0), state, SPACE, 0.01)
    assert torch.allclose(state["history"][:-1], expected.expand(4, 3), atol=1e-5)
    assert torch.isclose(state["history"][-1, 0], torch.tensor(0.0), atol=1e-6)


def test_heads_are_bounded_even_for_extreme_weights():
    rule = Opt2Vec(max_lr_scale=10.0)
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0, 100)
    state = rule.init_state(torch.zeros(8), SPACE)
    for loss in (1e-8, 1.0, 1e8):
        with torch.no_grad():
            _, state, info = rule(torch.zeros(8), torch.randn(8), torch.tensor(loss), state, SPACE, 0.01)
        assert 0.1 - 1e-6 <= float(info["lr_scale"]) <= 10.0 + 1e-6
        assert 0.0 <= float(info["momentum"]) <= 1.0
        assert math.isclose(float(info["lr"]), 0.01 * float(info["lr_scale"]), rel_tol=1e-5)


def test_untrained_opt2vec_is_sgd_with_momentum():
    rule, sgd = Opt2Vec(base_lr=0.02, initial_momentum=0.9), SGDMomentum(lr=0.02, momentum=0.9)
    theta_a = theta_b = torch.randn(8)
    state_a, state_b = rule.init_state(theta_a, SPACE), sgd.init_state(theta_b, SPACE)
    for _ in range(4):
        grad = torch.randn(8)
        theta_a, state_a, _ = rule(theta_a, grad, torch.tensor(1.0), state_a, SPACE, 0.02)
        theta_b, state_b, _ = sgd(theta_b, grad, torch.tensor(1.0), state_b, SPACE, 0.02)
    assert torch.allclose(theta_a, theta_b, atol=1e-6)


def test_update_rule_is_the_seed_formula():
    rule = Opt2Vec(base_lr=0.1)
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0, 0.5)
    params, grads = torch.randn(8), torch.randn(8)
    state = rule.init_state(params, SPACE)
    state["momentum_buffer"] = torch.randn(8)
    new, new_state, info = rule(params, grads, torch.tensor(2.0), state, SPACE, 0.1)
    buf = info["momentum"] * state["momentum_buffer"] + grads
    assert torch.allclose(new_state["momentum_buffer"], buf)
    assert torch.allclose(new, params - 0.1 * info["lr_scale"] * buf, atol=1e-6)


@pytest.mark.parametrize("kwargs, key", [({"history_length": 0}, "history_length"), ({"base_lr": -1}, "base_lr"),
                                         ({"max_lr_scale": 0.5}, "max_lr_scale")])
def test_bad_values_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Opt2Vec(**kwargs)
