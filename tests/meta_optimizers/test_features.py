"""Per-parameter feature sets against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_l2o.meta_optimizers.features import KofinasFeatures, MetzFeatures, log_sign
from lightning_l2o.params import ParamLayout, ParamSpace


def test_log_sign_preprocessing_by_hand():
    x = torch.tensor([1.0, -math.exp(-5), 1e-6, 0.0, -100.0])
    expected = torch.tensor([
        [0.0, 1.0],                       # log 1 / 10, sign
        [-0.5, -1.0],                     # log e^-5 / 10, sign
        [-1.0, math.exp(10) * 1e-6],      # below e^-10: (-1, e^10 x)
        [-1.0, 0.0],
        [math.log(100) / 10, -1.0],
    ])
    torch.testing.assert_close(log_sign(x), expected)


def test_log_sign_has_finite_gradients_at_zero():
    x = torch.tensor([0.0, 1e-8, 2.0], requires_grad=True)
    log_sign(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_kofinas_features_accumulate_momenta_and_preprocess_14_values():
    features = KofinasFeatures()
    params, space = torch.tensor([2.0, -3.0]), ParamSpace.of_layout(ParamLayout.from_tensors([("w", torch.zeros(2))]))
    state = features.init_state(params, space)
    g1, g2 = torch.tensor([1.0, 0.5]), torch.tensor([-2.0, 0.25])
    _, state = features(params, g1, state, space)
    out, state = features(params, g2, state, space)
    betas = torch.tensor([0.5, 0.9, 0.99, 0.999, 0.9999])
    momenta = betas * g1[:, None] + g2[:, None]
    torch.testing.assert_close(state["momenta"], momenta)
    assert out.shape == (2, 14) == (2, features.num_features)
    # parameter 0: p = 2, g = -2, m(0.5) = 0.5 * 1 - 2 = -1.5
    torch.testing.assert_close(out[0, :6], torch.tensor([math.log(2) / 10, 1.0, math.log(2) / 10, -1.0,
                                                          math.log(1.5) / 10, -1.0]))


def test_metz_features_normalise_per_tensor_and_embed_time():
    features = MetzFeatures()
    space = ParamSpace.of_layout(ParamLayout.from_tensors([("a", torch.zeros(2)), ("b", torch.zeros(1))]))
    params = torch.tensor([1.0, 1.0, 5.0])
    grads = torch.tensor([3.0, 4.0, -2.0])
    state = features.init_state(params, space)
    out, state = features(params, grads, state, space)
    assert out.shape == (3, 18) == (3, features.num_features)
    rms_a = math.sqrt((9 + 16) / 2 + 1e-5)
    torch.testing.assert_close(out[:2, 0], torch.tensor([3.0, 4.0]) / rms_a)
    torch.testing.assert_close(out[2, 0], torch.tensor(-2.0 / math.sqrt(4 + 1e-5)))
    # first EMA momentum (decay 0.1): 0.9 g, normalised by its own rms over tensor a
    torch.testing.assert_close(out[:2, 2], torch.tensor([0.9 * 3, 0.9 * 4]) / math.sqrt(0.81 * 12.5 + 1e-5))
    torch.testing.assert_close(out[:, 7:], torch.full((3, 11), math.tanh(-1.0)))
    out, state = features(params, grads, state, space)
    timescales = torch.tensor([1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000.0])
    torch.testing.assert_close(out[0, 7:], torch.tanh(1 / timescales - 1))
    assert float(state["step"]) == 2


@pytest.mark.parametrize("features", [KofinasFeatures(), MetzFeatures()])
def test_features_are_differentiable_in_params_and_grads(features):
    params = torch.randn(6, requires_grad=True)
    grads = torch.randn(6, requires_grad=True)
    space = ParamSpace.of_layout(ParamLayout.from_tensors([("a", torch.zeros(2, 2)), ("b", torch.zeros(2))]))
    out, _ = features(params, grads, features.init_state(params.detach(), space), space)
    params_grad, grads_grad = torch.autograd.grad(out.square().sum(), (params, grads))
    assert torch.isfinite(params_grad).all() and grads_grad.abs().sum() > 0
