"""NFN: its NP layer against an edge-by-edge computation, equivariance at the reference size, one depth (any widths)
and the refusal of others, meta-training and deployment at that depth, and its argument check."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from lightning_l2o import L2OModule, NFNMetaOptimizer, load_learned_optimizer
from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import NeuralGraph
from lightning_l2o.meta_optimizers.gnn import NPLinear
from lightning_l2o.params import ParamSpace
from lightning_l2o.tasks import TaskSpec
from tests.conftest import tiny_datamodule, tiny_trainer
from tests.meta_optimizers.gnn.test_base import (
    ARCHITECTURES,
    EQUIVARIANCE_CASES,
    check_deployed_equals_the_rule_in_a_plain_loop,
    flat,
    mlp,
    permutation_error,
)
from tests.meta_optimizers.test_per_parameter import run_rule


def test_np_layer_equals_the_edge_by_edge_formula():
    """Every mean taken from the edge list, not from the per-layer matrices the layer views the edges as."""
    torch.manual_seed(0)
    graph = NeuralGraph.from_module(mlp())
    channels, depth = 3, len(graph.layer_layout) - 1
    layer = NPLinear(channels, depth)
    edges, nodes = torch.randn(graph.num_edges, channels), torch.randn(graph.num_nodes, channels)
    source, target = graph.edge_index
    edge_layer = graph.node_layer[source]

    def mean(rows: torch.Tensor) -> torch.Tensor:
        return edges[rows].mean(0) if rows.any() else torch.zeros(channels)

    contexts = [torch.cat([mean(target == v), nodes[v], mean(source == v)]) for v in range(graph.num_nodes)]
    means = torch.cat([*(mean(edge_layer == i) for i in range(depth)),
                       *(nodes[graph.node_layer == i].mean(0) for i in range(depth + 1))])
    expected_edges = torch.stack([
        layer.edge_self[i](edges[k]) + layer.edge_global[i](means) + layer.edge_source[i](contexts[source[k]])
        + layer.edge_target[i](contexts[target[k]]) for k, i in enumerate(edge_layer.tolist())])
    expected_nodes = torch.stack([
        nodes[v] if i == 0 else layer.node_self[i - 1](contexts[v]) + layer.node_global[i - 1](means)
        for v, i in enumerate(graph.node_layer.tolist())])
    new_edges, new_nodes = layer(edges, nodes, graph)
    torch.testing.assert_close(new_edges, expected_edges, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new_nodes, expected_nodes, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("make_model", "pairs"), EQUIVARIANCE_CASES)
def test_the_reference_size_nfn_is_equivariant(make_model, pairs):
    torch.manual_seed(0)
    assert permutation_error(NFNMetaOptimizer(optimizee_depth=3), make_model(), pairs) < 1e-5


def _depth(name: str) -> int:
    return len(NeuralGraph.from_module(ARCHITECTURES[name]()).layer_layout) - 1


def test_one_nfn_runs_on_every_width_and_dataset_of_its_depth_and_refuses_every_other_depth():
    torch.manual_seed(0)
    rule = NFNMetaOptimizer(hidden_dim=8, num_layers=2)  # task 17's depth: 4 weight layers
    names = sorted(ARCHITECTURES)
    assert {_depth(name) for name in names} >= {2, 3, 4, 5}
    for name in names:
        model = ARCHITECTURES[name]()
        space, params = ParamSpace.of_module(model), flat(model)
        if _depth(name) == 4:
            new, _ = run_rule(rule, space, params, [torch.randn_like(params)])
            assert torch.isfinite(new).all() and not torch.equal(new, params), name
        else:
            with pytest.raises(ConfigError, match=f"optimizee_depth: {_depth(name)}, or use PNA"):
                run_rule(rule, space, params, [torch.randn_like(params)])


def test_a_meta_trained_nfn_deploys_on_its_depth_as_the_rule_in_a_plain_loop_and_refuses_another_on_load(tmp_path):
    regression = TaskSpec("regression", arch={"inputs": 4}, batch_size=16, horizon=6)  # a Linear: depth 1
    pl.seed_everything(0, verbose=False)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(L2OModule(NFNMetaOptimizer(hidden_dim=8, num_layers=2, optimizee_depth=1)),
                tiny_datamodule(train_tasks=[regression], val_tasks=[regression], test_tasks=[regression],
                                unroll_length=3))
    trainer.save_checkpoint(tmp_path / "nfn.ckpt")
    x = torch.randn(8, 5)
    check_deployed_equals_the_rule_in_a_plain_loop(tmp_path / "nfn.ckpt", nn.Linear(5, 2), x, torch.randn(8, 2),
                                                   nn.functional.mse_loss)
    deeper = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="optimizee_depth=1"):
        load_learned_optimizer(tmp_path / "nfn.ckpt", deeper)


@pytest.mark.parametrize("depth", [0, -1, 2.5, True])
def test_a_bad_optimizee_depth_is_refused_with_an_example(depth):
    with pytest.raises(ConfigError, match="optimizee_depth must be a positive integer.*e.g. 4"):
        NFNMetaOptimizer(optimizee_depth=depth)


def test_meta_training_refuses_a_task_of_another_depth_before_any_step(tmp_path):
    regression = TaskSpec("regression", arch={"inputs": 4}, batch_size=16, horizon=6)
    digits = TaskSpec("mlp", arch={"hidden": [8]}, dataset="digits", batch_size=16, horizon=6)  # depth 2
    module = L2OModule(NFNMetaOptimizer(hidden_dim=8, num_layers=1, optimizee_depth=1))
    start = [p.detach().clone() for p in module.meta_optimizer.parameters()]
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    expected = r"data.val_tasks\[0\] \(mlp-digits.*\): NFNMetaOptimizer.*optimizee_depth: 2"
    with pytest.raises(ConfigError, match=expected):
        trainer.fit(module, tiny_datamodule(train_tasks=[regression], val_tasks=[digits], test_tasks=[digits]))
    assert all(torch.equal(p, q) for p, q in zip(start, module.meta_optimizer.parameters(), strict=True))
