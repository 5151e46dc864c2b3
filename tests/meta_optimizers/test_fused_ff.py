"""The FF step's compiled CPU kernel: the eager step's results, taken only in deployed steps where no gradient
flows, and a clear fallback where it cannot be built."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from torch import nn

from lightning_l2o import FFMetaOptimizer, LearnedOptimizer, compiled_kernels
from lightning_l2o.meta_optimizers import fused_ff
from lightning_l2o.meta_optimizers.base import deployed_step, in_deployed_step
from lightning_l2o.params import ParamLayout, ParamSpace

needs_kernel = pytest.mark.skipif(fused_ff.library() is None,
                                  reason="the compiled kernel cannot be built here (see the warning: no C compiler?)")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def step_inputs(rule: FFMetaOptimizer, n_in: int = 37, seed: int = 0):
    """A model of ``(n_in + 1) * 19 + 20 * 3`` parameters (not a multiple of any block size), its gradient, and
    a state with momenta of several magnitudes (both branches of the log/sign features)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n_in, 19), nn.ReLU(), nn.Linear(19, 3))
    space = ParamSpace.of_module(model)
    params = ParamLayout.flatten([p.detach() for p in model.parameters()])
    grads = torch.randn_like(params) * torch.logspace(-7, 0, len(params))[torch.randperm(len(params))]
    state = rule.init_state(params, space)
    state["momenta"] = torch.randn_like(state["momenta"]) * 1e-3
    return params, grads, state, space


def step(rule, params, grads, state, space, fused: bool):
    with torch.no_grad(), deployed_step(), compiled_kernels.fused_kernels(fused):
        assert fused_ff.applies(rule, params, grads, state) == fused
        return rule(params, grads, torch.tensor(0.0), state, space, rule.lr)


@needs_kernel
@pytest.mark.parametrize(("hidden_dim", "num_layers", "chunk_size"),
                         [(64, 2, 16384), (64, 2, 101), (64, 1, 250), (64, 3, 16384), (32, 2, 77), (24, 1, 16384)])
def test_fused_step_equals_the_eager_step(one_thread, hidden_dim, num_layers, chunk_size):
    torch.manual_seed(1)
    rule = FFMetaOptimizer(hidden_dim=hidden_dim, num_layers=num_layers, chunk_size=chunk_size)
    for layer in rule.network.net:  # a trained rule's output layer is not small: make the updates vary
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))
    params, grads, state, space = step_inputs(rule)
    fused_params, fused_state, fused_info = step(rule, params, grads, state, space, fused=True)
    eager_params, eager_state, eager_info = step(rule, params, grads, state, space, fused=False)
    assert torch.equal(fused_state["momenta"], eager_state["momenta"])  # no fused multiply-add in the momenta
    assert fused_state.keys() == eager_state.keys() and fused_info.keys() == eager_info.keys()
    rounding = 2 * torch.finfo(torch.float32).eps * params.abs().max()  # of theta + delta, in either path
    torch.testing.assert_close(fused_params - params, eager_params - params, rtol=1e-4, atol=rounding)
    torch.testing.assert_close(fused_info["update_rms"], eager_info["update_rms"], rtol=1e-5, atol=0)
    assert not torch.equal(fused_params, params)


@needs_kernel
@pytest.mark.parametrize("hidden_dim", [64, 24])
def test_a_nan_gradient_gives_what_the_eager_step_gives(one_thread, hidden_dim):
    """NaN stays in the momenta; the ReLU turns it into 0 in both paths (oneDNN's fused ReLU is max(x, 0))."""
    rule = FFMetaOptimizer(hidden_dim=hidden_dim)
    params, grads, state, space = step_inputs(rule)
    grads[[3, 500]] = math.nan
    (fused_params, fused_state, _), (eager_params, eager_state, _) = (
        step(rule, params, grads, state, space, fused) for fused in (True, False))
    assert fused_state["momenta"][[3, 500]].isnan().all() and eager_state["momenta"][[3, 500]].isnan().all()
    torch.testing.assert_close(fused_params, eager_params, equal_nan=True)


def test_the_eager_step_runs_where_a_gradient_flows(one_thread):
    rule = FFMetaOptimizer()
    params, grads, state, space = step_inputs(rule)
    params.requires_grad_()
    assert not fused_ff.applies(rule, params, grads, state)
    new_params, _, _ = rule(params, grads, torch.tensor(0.0), state, space, rule.lr)
    assert new_params.grad_fn is not None
    with torch.no_grad(), deployed_step():
        assert fused_ff.applies(rule, params, grads, state) == (fused_ff.library() is not None)


@needs_kernel
def test_deployed_steps_use_the_kernel_and_meta_test_does_not(one_thread, monkeypatch):
    calls = []
    kernel_step = fused_ff.fused_ff_step

    def counted(*args):
        calls.append(args)
        return kernel_step(*args)

    monkeypatch.setattr(fused_ff, "fused_ff_step", counted)
    model = nn.Linear(5, 3)
    optimizer = LearnedOptimizer(model, FFMetaOptimizer())
    model(torch.randn(4, 5)).square().sum().backward()
    optimizer.step()
    assert len(calls) == 1
    rule = FFMetaOptimizer()
    params, grads, state, space = step_inputs(rule)
    with torch.no_grad():  # as meta-test calls the rule: no graph, but not a deployed step
        rule(params, grads, torch.tensor(0.0), state, space, rule.lr)
    assert len(calls) == 1


@pytest.mark.parametrize("variant", [{"features": "metz"}, {"progress_features": True}, {"adam_lr": 0.01},
                                     {"network_dtype": "bfloat16"}])
def test_other_rules_keep_the_eager_step(one_thread, variant):
    rule = FFMetaOptimizer(**variant)
    params, grads, state, _ = step_inputs(rule)
    with torch.no_grad(), deployed_step():
        assert not fused_ff.applies(rule, params, grads, state)


def test_tensors_the_kernel_would_misread_keep_the_eager_step(one_thread):
    rule = FFMetaOptimizer()
    params, grads, state, _ = step_inputs(rule)
    with torch.no_grad(), deployed_step():
        assert fused_ff.applies(rule, params, grads, state) == (fused_ff.library() is not None)
        assert not fused_ff.applies(rule, params, grads, {"momenta": state["momenta"][:-1]})
        assert not fused_ff.applies(rule, params, grads, {"momenta": state["momenta"][:, :4].contiguous()})
        assert not fused_ff.applies(rule, params, grads[:-1], state)


def test_more_than_one_thread_keeps_the_eager_step():
    rule = FFMetaOptimizer()
    params, grads, state, _ = step_inputs(rule)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad(), deployed_step():
            assert not fused_ff.applies(rule, params, grads, state)
    finally:
        torch.set_num_threads(threads)


def test_without_a_compiler_the_step_warns_once_and_stays_eager(one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv("L2O_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    fused_ff.library.cache_clear()
    compiled_kernels.load.cache_clear()
    try:
        model = nn.Linear(5, 3)
        optimizer = LearnedOptimizer(model.parameters(), FFMetaOptimizer())
        model(torch.randn(4, 5)).square().sum().backward()
        with pytest.warns(UserWarning, match="kernel for the FF step is unavailable .* Install a C compiler"):
            optimizer.step()
        assert fused_ff.library() is None
    finally:
        fused_ff.library.cache_clear()
        compiled_kernels.load.cache_clear()


def test_a_deployed_step_is_marked_in_its_own_thread_only():
    seen = []
    with deployed_step():
        thread = threading.Thread(target=lambda: seen.append(in_deployed_step()))
        thread.start()
        thread.join()
        assert in_deployed_step()
    assert seen == [False] and not in_deployed_step()
