import pytest
import torch

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers import Adam, AdamW, SGDMomentum, build_baseline
from lightning_l2o.params import ParamLayout, ParamSpace


@pytest.mark.parametrize(
    "rule, reference",
    [
        (SGDMomentum(lr=0.05, momentum=0.8), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8)),
        (Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
        (AdamW(lr=0.05), lambda p: torch.optim.AdamW(p, lr=0.05)),
        (AdamW(lr=0.05, weight_decay=0.5), lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.5)),
        (Adam(lr=0.05, warmup_steps=3), lambda p: torch.optim.Adam(p, lr=0.05)),
    ],
)
def test_matches_torch_optim(rule, reference):
    torch.manual_seed(0)
    target = torch.randn(6)
    theta = torch.randn(6)
    ref_param = theta.clone().requires_grad_()
    ref = reference([ref_param])
    warmup = rule.warmup_steps if isinstance(rule, Adam) else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    space = ParamSpace.of_layout(ParamLayout(("x",), (torch.Size([6]),)))
    state = rule.init_state(theta, space)
    for _ in range(5):
        grad = 2 * (theta - target) * torch.arange(1.0, 7.0)
        theta, state, _ = rule(theta, grad, torch.tensor(0.0), state, space, rule.lr)
        ref.zero_grad()
        ((ref_param - target).square() * torch.arange(1.0, 7.0)).sum().backward()
        ref.step()
        schedule.step()
    torch.testing.assert_close(theta, ref_param.detach(), rtol=1e-5, atol=1e-5)


def test_baselines_have_nothing_to_learn_and_bad_values_are_named():
    assert not build_baseline("adam", 1e-3).is_learned
    assert build_baseline("adamw", 1e-3).name == "adamw"
    with pytest.raises(ConfigError, match="momentum must be in"):
        SGDMomentum(momentum=1.5)
    with pytest.raises(ConfigError, match="warmup_steps must be >= 0"):
        Adam(warmup_steps=-1)
    with pytest.raises(ConfigError, match="unknown baseline 'rmsprop'"):
        build_baseline("rmsprop", 0.1)
    assert build_baseline("adamw", 1e-3, weight_decay=0.1).weight_decay == 0.1
    assert build_baseline("adamw", 1e-3).weight_decay == 0.01
    with pytest.raises(ConfigError, match="'sgd_momentum' has no weight decay to set; only \\['adamw'\\]"):
        build_baseline("sgd_momentum", 0.1, weight_decay=0.1)
