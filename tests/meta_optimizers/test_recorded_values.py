"""Every rule gives the values recorded before the optimizee's structure became an input (ParamSpace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_l2o.meta_optimizers import Adam, AdamW, FFMetaOptimizer, LSTMMetaOptimizer, Opt2Vec, SGDMomentum
from lightning_l2o.tasks import TaskSpec
from lightning_l2o.unroll import InnerState, inner_step, unroll

RECORDED = json.loads((Path(__file__).parent / "data" / "rule_values_before_param_space.json").read_text())
STEPS = 6


def build_rule(name: str):
    torch.manual_seed(0)  # the recording built all rules in this order from one seed
    rules = {}
    for key, factory in [
        ("opt2vec", Opt2Vec), ("ff_kofinas", FFMetaOptimizer), ("ff_metz", lambda: FFMetaOptimizer(features="metz")),
        ("lstm", LSTMMetaOptimizer), ("adam", lambda: Adam(lr=0.01)), ("adamw", lambda: AdamW(lr=0.01)),
        ("sgd_momentum", lambda: SGDMomentum(lr=0.05)),
    ]:
        rules[key] = factory()
    return rules[name]


@pytest.mark.parametrize("name", list(RECORDED["rules"]))
def test_rule_matches_values_recorded_before_the_change(name):
    recorded = RECORDED["rules"][name]
    spec = TaskSpec.from_dict(RECORDED["spec"])
    rule = build_rule(name)
    state = InnerState.start(spec, rule)
    for _ in range(STEPS):
        state, loss, _, _ = inner_step(rule, state, rule.lr, create_graph=False, track_update=False)
    torch.testing.assert_close(state.params.detach(), torch.tensor(recorded["params"]), rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(recorded["last_loss"], rel=1e-5)
    if "meta_loss" in recorded:
        result = unroll(rule, InnerState.start(spec, rule), 3, "train")
        result.meta_loss.backward()
        assert result.meta_loss.item() == pytest.approx(recorded["meta_loss"], rel=1e-5)
        norms = [p.grad.norm().item() for p in rule.parameters()]
        assert norms == pytest.approx(recorded["meta_grad_norms"], rel=1e-4)
