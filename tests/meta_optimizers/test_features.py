"""Per-parameter feature sets against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.features import (
    ALL,
    AdamFeatures,
    FeatureSet,
    KofinasFeatures,
    MetzFeatures,
    ProgressFeatures,
    ShapeFeatures,
    build_feature_set,
    log_sign,
)
from lightning_l2o.params import ParamLayout, ParamSpace

TWO_TENSORS = ParamSpace.of_layout(ParamLayout.from_tensors([("a", torch.zeros(2, 2)), ("b", torch.zeros(3))]))
TIMESCALES = torch.tensor([1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000.0])


def run_features(features: FeatureSet, params: torch.Tensor, grads: list[torch.Tensor],
                 space: ParamSpace = TWO_TENSORS) -> torch.Tensor:
    """The features ``(n, F)`` of the last of ``grads``, each ``(n,)``, fed in order from a fresh state."""
    state = features.init_state(params, space)
    for g in grads:
        out, state = features(params, g, state, space)
    return out


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


def test_log_sign_gradients_by_hand():
    x = torch.tensor([2.0, -4.0, 1e-6, -1e-6], requires_grad=True)
    log_grad, = torch.autograd.grad(log_sign(x)[:, 0].sum(), x)
    sign_grad, = torch.autograd.grad(log_sign(x)[:, 1].sum(), x)
    torch.testing.assert_close(log_grad, torch.tensor([1 / 20, -1 / 40, 0.0, 0.0]))  # d log|x| / p = 1 / (p x) above e^-p
    torch.testing.assert_close(sign_grad, torch.tensor([0.0, 0.0, math.exp(10), math.exp(10)]))


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
    torch.testing.assert_close(out[0, 7:], torch.tanh(1 / TIMESCALES - 1))
    assert float(state["step"]) == 2


def test_adam_features_by_hand():
    features = AdamFeatures()
    space = ParamSpace.of_layout(ParamLayout.from_tensors([("a", torch.zeros(2)), ("b", torch.zeros(1))]))
    params = torch.tensor([3.0, 4.0, -2.0])
    g1, g2 = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    out = run_features(features, params, [g1], space)
    assert out.shape == (3, 6) == (3, features.num_features)
    # step 1: bias-corrected v = g^2 and every bias-corrected momentum = g, so each is g / sqrt(g^2 + eps^2) = sign g
    torch.testing.assert_close(out[:, :5], torch.sign(g1)[:, None].expand(3, 5))
    torch.testing.assert_close(out[:, 5], torch.tensor([3 / math.sqrt(12.5 + 1e-5), 4 / math.sqrt(12.5 + 1e-5),
                                                        -2 / math.sqrt(4 + 1e-5)]))
    out = run_features(features, params, [g1, g2], space)
    # parameter 0 at step 2, momentum beta 0.9: (0.9 * 0.1 * 1 + 0.1 * 3) / (1 - 0.81) over sqrt(v_hat); float32's
    # 0.999 puts 1 - 0.999^2 off by ~1e-5 (relative)
    v_hat = (0.999 * 0.001 * 1 + 0.001 * 9) / (1 - 0.999**2)
    torch.testing.assert_close(out[0, 0], torch.tensor(3 / math.sqrt(v_hat + 1e-16)), rtol=1e-4, atol=0)
    torch.testing.assert_close(out[0, 2], torch.tensor((0.09 + 0.3) / 0.19 / math.sqrt(v_hat + 1e-16)),
                               rtol=1e-4, atol=0)


@pytest.mark.parametrize("scale", [0.1, 1e3])
def test_adam_features_are_invariant_to_the_gradient_scale(scale):
    params = torch.randn(TWO_TENSORS.layout.total)
    grads = [torch.randn_like(params) for _ in range(4)]
    plain = run_features(AdamFeatures(), params, grads)
    torch.testing.assert_close(run_features(AdamFeatures(), params, [scale * g for g in grads]), plain,
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("features", [MetzFeatures(), AdamFeatures()], ids=["metz", "adam"])
def test_per_tensor_normalised_features_are_invariant_to_scaling_one_tensors_gradient(features):
    params = torch.randn(TWO_TENSORS.layout.total)
    # metz adds 1e-5 to each mean square: its slowest momentum (0.001 g after a step) needs large gradients to
    # be scale-free this early
    grads = [1e3 * torch.randn_like(params) for _ in range(4)]
    scaled_a = torch.cat([torch.full((4,), 30.0), torch.ones(3)])  # tensor a's 4 entries, not b's 3
    plain = run_features(features, params, grads)
    torch.testing.assert_close(run_features(features, params, [scaled_a * g for g in grads]), plain,
                               rtol=0, atol=1e-5)


def appended_columns(features: FeatureSet, inner: FeatureSet, params: torch.Tensor,
                     grads: list[torch.Tensor]) -> torch.Tensor:
    """The columns that ``features`` appends to ``inner``'s, after checking that it starts with ``inner``'s features
    and keeps its step scale."""
    assert features.default_step_scale == inner.default_step_scale
    out = run_features(features, params, grads)
    torch.testing.assert_close(out[:, :inner.num_features], run_features(inner, params, grads))
    return out[:, inner.num_features:]


def test_progress_features_append_metz_time_features_to_any_set():
    params = torch.randn(TWO_TENSORS.layout.total)
    grads = [torch.randn_like(params) for _ in range(3)]
    features = build_feature_set("kofinas", progress=True)
    assert isinstance(features, ProgressFeatures) and features.num_features == 14 + 11
    time = appended_columns(features, KofinasFeatures(), params, grads)
    torch.testing.assert_close(time, torch.tanh(2 / TIMESCALES - 1).expand(7, -1))  # t = 0, 1, 2
    torch.testing.assert_close(time, run_features(MetzFeatures(), params, grads)[:, 7:])
    state = features.init_state(params, TWO_TENSORS)
    assert set(state) == {"momenta", "progress_step"}
    assert build_feature_set("adam", progress=True).num_features == 6 + 11
    assert isinstance(build_feature_set("metz"), MetzFeatures)


def test_shape_features_append_each_tensors_log_fans_over_three_to_any_set():
    params = torch.randn(TWO_TENSORS.layout.total)
    grads = [torch.randn_like(params) for _ in range(3)]
    features = build_feature_set("adam", shape=True)
    assert isinstance(features, ShapeFeatures) and features.num_features == 6 + 2
    a = torch.tensor([math.log10(2) / 3, math.log10(2) / 3])  # a (2, 2): fan-in 2, fan-out 2; b (3,): 1 and 3
    b = torch.tensor([0.0, math.log10(3) / 3])
    torch.testing.assert_close(appended_columns(features, AdamFeatures(), params, grads), torch.stack([a] * 4 + [b] * 3))
    assert set(features.init_state(params, TWO_TENSORS)) == set(AdamFeatures().init_state(params, TWO_TENSORS))
    both = build_feature_set("kofinas", progress=True, shape=True)
    assert both.num_features == 14 + 2 + 11
    appended_columns(both, ShapeFeatures(KofinasFeatures()), params, grads)


@pytest.mark.parametrize(("name", "progress", "message"), [
    ("lion", False, "unknown feature set 'lion'; choose one of: kofinas, metz, adam"),
    ("metz", True, "set progress_features: false"),
])
def test_bad_feature_options_name_the_fix(name, progress, message):
    with pytest.raises(ConfigError, match=message):
        build_feature_set(name, progress)


@pytest.mark.parametrize("features", [KofinasFeatures(), MetzFeatures(), AdamFeatures(), ProgressFeatures(AdamFeatures()),
                                      ShapeFeatures(AdamFeatures())], ids=["kofinas", "metz", "adam", "progress", "shape"])
def test_features_are_differentiable_in_params_and_grads(features):
    params = torch.randn(6, requires_grad=True)
    grads = torch.randn(6, requires_grad=True)
    space = ParamSpace.of_layout(ParamLayout.from_tensors([("a", torch.zeros(2, 2)), ("b", torch.zeros(2))]))
    out, _ = features(params, grads, features.init_state(params.detach(), space), space)
    params_grad, grads_grad = torch.autograd.grad(out.square().sum(), (params, grads))
    assert torch.isfinite(params_grad).all() and grads_grad.abs().sum() > 0


@pytest.mark.parametrize("features", [KofinasFeatures(), MetzFeatures(), AdamFeatures(), ProgressFeatures(AdamFeatures()),
                                      ShapeFeatures(AdamFeatures())], ids=["kofinas", "metz", "adam", "progress", "shape"])
def test_the_features_of_chunks_are_the_rows_of_the_whole_features_bit_for_bit(features):
    """Chunks of 3 of 7 coordinates cut tensor a (4 entries): its per-tensor statistics stay those of all of a."""
    params = torch.randn(TWO_TENSORS.layout.total)
    grads = [torch.randn_like(params) for _ in range(3)]
    state = features.init_state(params, TWO_TENSORS)
    for g in grads:
        chunk_features, state = features.prepare(params, g, state, TWO_TENSORS)
    chunks = torch.cat([chunk_features(slice(start, start + 3)) for start in range(0, 7, 3)])
    assert torch.equal(chunks, chunk_features(ALL))
    assert torch.equal(chunks, run_features(features, params, grads))
