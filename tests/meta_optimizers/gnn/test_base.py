"""Every GNN rule on neural graphs (PNA, PNA-LSTM, the relational transformer, NFN): forward and backward,
equivariance, the per-parameter options; those of any depth on every architecture and deployed on a user's module
(NFN, tied to one depth, in test_nfn.py)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lightning_l2o import (
    FFMetaOptimizer,
    L2OModule,
    NFNMetaOptimizer,
    PNAMetaOptimizer,
    RelationalTransformerMetaOptimizer,
    load_learned_optimizer,
)
from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers import MetaOptimizer, State
from lightning_l2o.meta_optimizers.gnn import (
    GraphMetaOptimizer,
    GraphNetwork,
    NFNNetwork,
    PNANetwork,
    RelationalTransformerNetwork,
    degree_histogram,
)
from lightning_l2o.meta_optimizers.gnn.base import MEMORY_KEYS
from lightning_l2o.optim import LearnedOptimizer
from lightning_l2o.params import ParamLayout, ParamSpace
from lightning_l2o.tasks import TaskSpec
from lightning_l2o.tasks.classifier import ConvNet
from lightning_l2o.tasks.presets import PRESETS
from tests.conftest import tiny_datamodule, tiny_trainer
from tests.meta_optimizers.test_per_parameter import (
    OPTIONS,
    check_round_trip_and_deploy,
    check_untrained_adam_correction_is_adam,
    check_zero_output_layer_still_learns,
    run_rule,
    train_small_model,
    trained_looking,
)


def small_pna(**kwargs) -> PNAMetaOptimizer:
    torch.manual_seed(0)
    return PNAMetaOptimizer(**{"hidden_dim": 16, "num_layers": 3, "max_inputs": 800, **kwargs})


def small_rt(**kwargs) -> RelationalTransformerMetaOptimizer:
    torch.manual_seed(0)
    return RelationalTransformerMetaOptimizer(**{"hidden_dim": 16, "num_layers": 2, "heads": 2, "max_inputs": 800,
                                                 **kwargs})


def small_pna_lstm(**kwargs) -> PNAMetaOptimizer:
    return small_pna(recurrent=True, **kwargs)


def small_nfn(**kwargs) -> NFNMetaOptimizer:
    """An NFN for the 3-layer :func:`mlp` and :func:`cnn`."""
    torch.manual_seed(0)
    return NFNMetaOptimizer(**{"hidden_dim": 16, "num_layers": 2, "optimizee_depth": 3, "max_inputs": 800, **kwargs})


ANY_DEPTH_RULES = [pytest.param(small_pna, id="pna"), pytest.param(small_pna_lstm, id="pna_lstm"),
                   pytest.param(small_rt, id="rt")]
GRAPH_RULES = [*ANY_DEPTH_RULES, pytest.param(small_nfn, id="nfn")]


def mlp() -> nn.Module:
    """3 weight layers, the same initial weights on every call."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def cnn() -> nn.Module:
    return ConvNet(2, [3, 4], [2, 1], num_classes=3)


def flat(model: nn.Module) -> Tensor:
    return ParamLayout.flatten([p.detach() for p in model.parameters()])


def permute_hidden(layer: nn.Module, following: nn.Module, perm: Tensor) -> None:
    """Reorder ``layer``'s output neurons (channels) and ``following``'s inputs alike: the same function."""
    with torch.no_grad():
        layer.weight.copy_(layer.weight[perm])
        layer.bias.copy_(layer.bias[perm])
        following.weight.copy_(following.weight[:, perm])


def permutation_error(rule: MetaOptimizer, model: nn.Module, pairs: list[tuple[str, str]]) -> float:
    """Max |update(permuted params) - permuted(update(params))| over 3 steps, hidden neurons permuted at ``pairs``."""
    space = ParamSpace.of_module(model)
    indexed = copy.deepcopy(model)
    with torch.no_grad():
        offset = 0
        for p in indexed.parameters():
            p.copy_(torch.arange(offset, offset + p.numel(), dtype=p.dtype).view_as(p))
            offset += p.numel()
    generator = torch.Generator().manual_seed(3)
    for first, second in pairs:
        layer, following = indexed.get_submodule(first), indexed.get_submodule(second)
        permute_hidden(layer, following, torch.randperm(layer.weight.shape[0], generator=generator))
    index = flat(indexed).long()
    assert not torch.equal(index, torch.arange(len(index)))
    torch.manual_seed(1)
    params = flat(model)
    grads = [torch.randn_like(params) for _ in range(3)]
    plain, _ = run_rule(rule, space, params, grads)
    permuted, _ = run_rule(rule, space, params[index], [g[index] for g in grads])
    return float((permuted - plain[index]).abs().max() / plain.abs().max())


class FlatVectorRule(MetaOptimizer):
    """Not equivariant: a linear map over the whole flattened gradient."""

    lr = 0.01

    def __init__(self, n: int) -> None:
        super().__init__(n=n)
        self.mix = nn.Linear(n, n)

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {}

    def forward(self, params, grads, loss, state, space, lr):
        return params - lr * self.mix(grads), state, {}


ENCODINGS = pytest.mark.parametrize("encoding", ["linear", "fourier"])


@ENCODINGS
@pytest.mark.parametrize("make", GRAPH_RULES)
def test_forward_and_backward_on_a_tiny_graph_reach_every_weight(make, encoding):
    rule = make(input_encoding=encoding)
    model = mlp()
    space = ParamSpace.of_module(model)
    params = flat(model).requires_grad_()
    grads = torch.randn_like(params)
    state = rule.init_state(params.detach(), space)
    if MEMORY_KEYS[0] in state:  # a recurrent GNN: one step first, so that its memory (and recurrent weights) matter
        with torch.no_grad():
            _, state, _ = rule(params.detach(), grads, torch.tensor(1.0), state, space, rule.lr)
    new, state, info = rule(params, grads, torch.tensor(1.0), state, space, rule.lr)
    assert new.shape == params.shape and torch.isfinite(new).all() and info["update_rms"] > 0
    new.square().sum().backward()
    assert params.grad is not None and params.grad.abs().sum() > 0
    for name, weight in rule.named_parameters():
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name
    assert set(state) - set(MEMORY_KEYS) == {"momenta"}  # the graph lives in the space, not in the state


EQUIVARIANCE_CASES = [  # a model and the (layer, following layer) pairs whose hidden neurons are permuted
    pytest.param(mlp, [("0", "2"), ("2", "4")], id="mlp"),
    pytest.param(cnn, [("features.0", "features.2"), ("features.2", "classifier")], id="cnn"),
]


@ENCODINGS
@pytest.mark.parametrize(("make_model", "pairs"), EQUIVARIANCE_CASES)
@pytest.mark.parametrize("make", GRAPH_RULES)
def test_permuting_hidden_neurons_permutes_the_update(make, make_model, pairs, encoding):
    assert permutation_error(make(input_encoding=encoding), make_model(), pairs) < 1e-5


@pytest.mark.parametrize("make", GRAPH_RULES)
def test_permuting_hidden_neurons_permutes_the_update_with_adam_and_progress_features(make):
    rule = make(features="adam", progress_features=True, adam_lr=1e-2)
    with torch.no_grad():
        rule.output_layer.weight.normal_()  # a trained correction, not the zero one
    assert permutation_error(rule, mlp(), [("0", "2"), ("2", "4")]) < 1e-5


def test_the_equivariance_test_fails_for_a_rule_over_the_flat_vector():
    model = mlp()
    torch.manual_seed(0)
    rule = FlatVectorRule(sum(p.numel() for p in model.parameters()))
    assert permutation_error(rule, model, [("0", "2")]) > 1e-3


def _preset_module(name: str) -> nn.Module:
    preset = PRESETS[name]
    in_channels = 3 if preset["dataset"] == "cifar10" else 1
    return ConvNet(in_channels, preset["arch"]["channels"], preset["arch"]["strides"], 10)


def _mlp_on(inputs: int, hidden: list[int]) -> nn.Module:
    widths = [inputs, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 10))


ARCHITECTURES = {
    **{name: (lambda name=name: _preset_module(name)) for name in PRESETS if name.startswith(("fashion_mnist", "cifar10"))},
    "mlp-digits": lambda: _mlp_on(64, [32]),
    "mlp-mnist": lambda: _mlp_on(784, [64, 32]),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("make", ANY_DEPTH_RULES)
def test_one_gnn_runs_on_every_width_depth_dataset_and_mlp(make, name):
    rule = make()  # one set of weights (a PNA's sized for task 17's degree histogram)
    model = ARCHITECTURES[name]()
    space = ParamSpace.of_module(model)
    params = flat(model)
    new, _ = run_rule(rule, space, params, [torch.randn_like(params)])
    assert torch.isfinite(new).all() and not torch.equal(new, params)


@pytest.mark.parametrize("make", GRAPH_RULES)
def test_bare_parameters_are_refused_with_the_fix_and_per_parameter_rules_accept_them(make):
    model = mlp()
    model(torch.randn(2, 4)).sum().backward()
    with pytest.raises(ConfigError, match="pass the model itself"):
        LearnedOptimizer(model.parameters(), make())  # at construction, before any step
    LearnedOptimizer(model.parameters(), FFMetaOptimizer()).step()


def test_meta_training_refuses_a_task_without_a_neural_graph_before_any_step(tmp_path):
    regression = TaskSpec("regression", arch={"inputs": 4}, batch_size=16, horizon=6)
    quadratic = TaskSpec("quadratic", arch={"dim": 5}, horizon=6)
    with pytest.raises(ConfigError, match=r"data.train_tasks\[1\] \(quadratic.*\): PNAMetaOptimizer needs the "
                                          r"optimizee's neural graph"):
        tiny_trainer(tmp_path, max_steps=2).fit(L2OModule(small_pna()), tiny_datamodule(
            train_tasks=[regression, quadratic], val_tasks=[regression], test_tasks=[regression]))


@pytest.fixture(scope="module", params=ANY_DEPTH_RULES)
def gnn_checkpoint(request, tmp_path_factory):
    """Each GNN rule meta-trained for 2 outer steps on regression tasks (a Linear optimizee)."""
    root = tmp_path_factory.mktemp("gnn")
    regression = TaskSpec("regression", arch={"inputs": 4}, batch_size=16, horizon=6)
    datamodule = tiny_datamodule(train_tasks=[regression], val_tasks=[regression], test_tasks=[regression],
                                 unroll_length=3)
    pl.seed_everything(0, verbose=False)
    trainer = tiny_trainer(root, max_steps=2)
    trainer.fit(L2OModule(request.param()), datamodule)
    path = root / "gnn.ckpt"
    trainer.save_checkpoint(path)
    return path


def check_deployed_equals_the_rule_in_a_plain_loop(checkpoint: Path, model: nn.Module, x: Tensor, y: Tensor,
                                                   loss_fn: Callable[[Tensor, Tensor], Tensor]) -> None:
    """3 steps of the optimizer loaded from ``checkpoint`` on ``model`` equal its rule applied by hand."""
    optimizer = load_learned_optimizer(checkpoint, model)
    rule, space = optimizer.update_rule, ParamSpace.of_module(model)
    expected, state = flat(model), None
    for _ in range(3):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        grads = ParamLayout.flatten([p.grad for p in model.parameters()])
        with torch.no_grad():
            state = rule.init_state(expected, space) if state is None else state
            expected, state, _ = rule(expected, grads, loss.detach(), state, space, rule.lr)
        optimizer.step()
        torch.testing.assert_close(flat(model), expected)


def test_deployed_gnn_on_a_nested_sequential_equals_the_rule_in_a_plain_loop(gnn_checkpoint):
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU()), nn.Sequential(nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 2)))
    check_deployed_equals_the_rule_in_a_plain_loop(gnn_checkpoint, model, torch.randn(8, 1, 6, 6),
                                                   torch.randint(0, 2, (8,)), nn.functional.cross_entropy)


class Classifier(pl.LightningModule):
    def __init__(self, ckpt) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        self.loss_fn = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self.net(x), y)

    def configure_optimizers(self):
        return load_learned_optimizer(self.ckpt, self)


def test_deployed_gnn_trains_a_lightning_module_passing_self(gnn_checkpoint):
    module = Classifier(gnn_checkpoint)
    before = flat(module)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    pl.Trainer(max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    after = flat(module)
    assert torch.isfinite(after).all() and not torch.equal(after, before)


@pytest.mark.parametrize("make", GRAPH_RULES)
def test_the_per_parameter_options_reach_the_gnn_and_its_head(make):
    rule = make(features="adam", progress_features=True)
    assert isinstance(rule, GraphMetaOptimizer)
    assert rule.network.node_in.in_channels == 6 + 11
    assert rule.head.net[0].in_features == 16 + 6 + 11
    assert rule.output_layer is rule.head.net[-1]
    assert not make(adam_lr=1e-2).output_layer.weight.any()
    torch.testing.assert_close(make(output_scale=0.01).output_layer.weight, 0.01 * make().output_layer.weight)


@pytest.mark.parametrize("features", ["kofinas", "metz", "adam"])
@pytest.mark.parametrize("make", GRAPH_RULES)
def test_untrained_gnn_adam_correction_is_torch_adam(make, features):
    check_untrained_adam_correction_is_adam(make(features=features, adam_lr=1e-2), model=mlp)


@pytest.mark.parametrize("make", GRAPH_RULES)
def test_zero_output_layer_of_the_gnn_adam_correction_still_learns(make):
    model = mlp()
    check_zero_output_layer_still_learns(make(features="adam", progress_features=True, adam_lr=1e-2),
                                         ParamSpace.of_module(model), flat(model))


@pytest.mark.parametrize("make", GRAPH_RULES)
def test_gnn_output_scale_shrinks_the_first_update_and_keeps_a_random_draw_finite(make):
    model = mlp()
    space, params = ParamSpace.of_module(model), flat(model)
    grads = torch.randn_like(params)
    rms = {}
    for scale in (1.0, 0.01):
        rule = make(output_scale=scale)
        rms[scale] = rule(params, grads, torch.tensor(1.0), rule.init_state(params, space), space, rule.lr)[2]["update_rms"]
    assert float(rms[0.01] / rms[1.0]) == pytest.approx(0.01, rel=0.05)
    params, losses = train_small_model(lambda m: LearnedOptimizer(m, make(output_scale=0.01)), steps=100, model=mlp())
    assert torch.isfinite(params).all() and max(losses) < 1.5 * losses[0]


@pytest.mark.parametrize("options", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("make", GRAPH_RULES)
def test_every_option_of_the_gnn_round_trips_through_a_checkpoint_config_and_deploys(make, options):
    check_round_trip_and_deploy(make(**options), model=mlp)


@pytest.mark.parametrize("make", GRAPH_RULES)
def test_fourier_inputs_keep_their_frequencies_out_of_the_meta_parameters_and_in_the_checkpoint(make):
    rule = make(input_encoding="fourier", fourier_scale=2.0)
    network = rule.network
    assert (network.edge_in.in_channels, network.node_in.in_channels) == (32, 32)  # 2 x hidden_dim 16
    frequencies = {name for name, _ in rule.named_buffers() if name.endswith("frequencies")}
    assert frequencies == {"network.edge_fourier.frequencies", "network.node_fourier.frequencies"}
    assert frequencies <= set(rule.state_dict()) and not frequencies & {name for name, _ in rule.named_parameters()}
    assert network.edge_fourier.frequencies.std() == pytest.approx(2.0, rel=0.15)
    check_round_trip_and_deploy(rule, model=mlp)  # the rebuilt rule draws others; the checkpoint's replace them
    assert not torch.equal(make(input_encoding="fourier").network.node_fourier.frequencies,
                           network.node_fourier.frequencies)


@pytest.mark.parametrize(("options", "message"), [
    ({"input_encoding": "fft"}, "input_encoding must be one of \\['linear', 'fourier'\\], got 'fft'"),
    ({"input_encoding": "fourier", "fourier_scale": 0.0}, "fourier_scale must be > 0, got 0.0"),
])
@pytest.mark.parametrize("make", GRAPH_RULES)
def test_a_bad_input_encoding_is_refused_with_the_key(make, options, message):
    with pytest.raises(ConfigError, match=message):
        make(**options)


NETWORKS = {
    "PNANetwork": lambda **embedding: PNANetwork(4, 8, 1, ["mean"], ["identity"], degree_histogram([2, 3]), **embedding),
    "RelationalTransformerNetwork": lambda **embedding: RelationalTransformerNetwork(4, 8, 1, 2, **embedding),
    "NFNNetwork": lambda **embedding: NFNNetwork(4, 8, 1, 2, **embedding),
}


@pytest.mark.parametrize(("options", "message"), [
    ({"input_encoding": "fft"}, "input_encoding must be one of \\['linear', 'fourier'\\], got 'fft'"),
    ({"input_encoding": "fourier", "fourier_scale": -1.0}, "fourier_scale must be > 0, got -1.0"),
])
@pytest.mark.parametrize("name", NETWORKS)
def test_a_network_built_on_its_own_refuses_a_bad_input_encoding_too(name, options, message):
    embedding = {"kernel_size": 3, "max_inputs": 4, "max_hidden_layers": 4, "max_outputs": 4}
    assert isinstance(NETWORKS[name](**embedding, input_encoding="fourier"), GraphNetwork)
    with pytest.raises(ConfigError, match=f"{name}: {message}"):
        NETWORKS[name](**embedding, **options)


@pytest.mark.parametrize("make", GRAPH_RULES)
def test_the_read_out_in_chunks_equals_one_chunk_and_runs_in_bfloat16(make):
    """83 coordinates in chunks of 16: each chunk's rows of the GNN's shared table, its own features."""
    model = mlp()
    space, params = ParamSpace.of_module(model), flat(model)
    grads = [torch.randn_like(params) for _ in range(2)]
    whole = trained_looking(make(features="metz", chunk_size=len(params)))
    expected, _ = run_rule(whole, space, params, grads)
    chunked, _ = run_rule(whole.with_config(chunk_size=16), space, params, grads)
    torch.testing.assert_close(chunked, expected, rtol=1e-6, atol=1e-6)
    bf16, _ = run_rule(whole.with_config(network_dtype="bfloat16"), space, params, grads)
    assert 0 < ((bf16 - params) - (expected - params)).norm() / (expected - params).norm() < 0.05


@pytest.mark.parametrize("make", GRAPH_RULES)
def test_a_param_group_added_later_is_checked_and_a_refused_one_is_not_added(make):
    model, other = mlp(), mlp()
    optimizer = LearnedOptimizer(model, make())
    with pytest.raises(ConfigError, match=r"param group 1: .*pass the model itself"):
        optimizer.add_param_group({"params": list(other.parameters())})
    assert len(optimizer.param_groups) == 1
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
