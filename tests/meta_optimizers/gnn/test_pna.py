"""PNA's own pieces: the degree histogram of its scalers, equivariance at the reference size, the memory of the
recurrent PNA-LSTM."""

from __future__ import annotations

import pytest
import torch

from lightning_l2o import PNAMetaOptimizer
from lightning_l2o.meta_optimizers.gnn import degree_histogram
from lightning_l2o.params import ParamSpace
from tests.meta_optimizers.gnn.test_base import EQUIVARIANCE_CASES, flat, mlp, permutation_error, small_pna


def test_degree_histogram_counts_fan_in_with_reverse_edges():
    # layout [1, 16, 32, 32, 10]: input 16, hidden 1+32, 16+32, 32+10, output 32
    hist = degree_histogram([1, 16, 32, 32, 10])
    assert hist[16] == 1 and hist[33] == 16 and hist[48] == 32 and hist[42] == 32 and hist[32] == 10
    assert int(hist.sum()) == 91


@pytest.mark.parametrize(("make_model", "pairs"), EQUIVARIANCE_CASES)
def test_the_reference_size_pna_is_equivariant(make_model, pairs):
    assert permutation_error(PNAMetaOptimizer(), make_model(), pairs) < 1e-5


def test_the_pna_lstm_carries_a_per_node_memory_that_changes_its_updates():
    model = mlp()  # layout [4, 6, 5, 3]: 18 nodes
    space, params = ParamSpace.of_module(model), flat(model)
    rule = small_pna(recurrent=True)
    assert rule.name == "pna_lstm" and small_pna().name == "pna"
    state = rule.init_state(params, space)
    assert state["gnn_h"].shape == state["gnn_c"].shape == (3, 18, 16) and not state["gnn_h"].any()
    torch.manual_seed(1)
    grads = torch.randn_like(params)
    first, state, _ = rule(params, grads, torch.tensor(1.0), state, space, rule.lr)
    assert state["gnn_h"].abs().sum() > 0 and state["gnn_c"].abs().sum() > 0
    again_fresh, _, _ = rule(params, grads, torch.tensor(1.0), rule.init_state(params, space), space, rule.lr)
    remembered = {**rule.init_state(params, space), "gnn_h": state["gnn_h"], "gnn_c": state["gnn_c"]}
    with_memory, _, _ = rule(params, grads, torch.tensor(1.0), remembered, space, rule.lr)
    torch.testing.assert_close(again_fresh, first)  # the same inputs from zeros: the same update
    assert (with_memory - first).abs().max() > 1e-6  # the same inputs with the memory: another update
