import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim import lr_scheduler

from lightning_l2o import (
    FFMetaOptimizer,
    L2OModule,
    LearnedOptimizer,
    LSTMMetaOptimizer,
    NFNMetaOptimizer,
    Opt2Vec,
    Opt2VecOptimizer,
    PNAMetaOptimizer,
    RelationalTransformerMetaOptimizer,
    load_learned_optimizer,
)
from lightning_l2o.errors import ConfigError
from lightning_l2o.optim import _finite
from lightning_l2o.params import ParamLayout, ParamSpace
from tests.conftest import tiny_datamodule, tiny_trainer
from tests.meta_optimizers.test_per_parameter import trained_looking


def _regression(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 10, generator=gen)
    return x, x @ torch.randn(10, 1, generator=gen)


def _trained_rule():
    rule = Opt2Vec()
    with torch.no_grad():
        for p in rule.parameters():
            p.normal_(0, 0.3)
    return rule


def test_seed_readme_loop_trains_a_model_and_returns_embeddings():
    model, (x, y) = nn.Linear(10, 1), _regression()
    optimizer = Opt2VecOptimizer(model.parameters(), base_lr=0.01, embedding_dim=16, history_length=5)
    first = nn.functional.mse_loss(model(x), y).item()
    for _ in range(100):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        embedding = optimizer.step(loss.item())
        optimizer.zero_grad()
    assert embedding.shape == (16,)
    assert loss.item() < 0.1 * first
    assert all(p.grad is None for p in model.parameters())
    assert set(optimizer.last_info) == {"embedding", "lr_scale", "momentum", "lr"}


def test_step_with_closure_returns_the_loss_and_needs_a_loss():
    model, (x, y) = nn.Linear(10, 1), _regression()
    optimizer = Opt2VecOptimizer(model.parameters())

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0
    with pytest.raises(ConfigError, match="needs the loss"):
        optimizer.step()


def test_param_groups_use_their_own_lr_on_all_parameters_at_once():
    rule = _trained_rule()
    a, b = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(4))
    optimizer = LearnedOptimizer([{"params": [a]}, {"params": [b], "lr": 0.5}], rule, lr=0.01)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01, 0.5]
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    expected = []
    for group in optimizer.param_groups:
        flat = ParamLayout.flatten([p.detach() for p in group["params"]])
        space = ParamSpace.of_layout(ParamLayout(("x",), (flat.shape,)))
        state = rule.init_state(flat, space)
        with torch.no_grad():
            expected.append(rule(flat, torch.ones_like(flat), torch.tensor(2.0), state, space, group["lr"])[0])
    optimizer.step(2.0)
    assert torch.allclose(a.detach().view(-1), expected[0]) and torch.allclose(b.detach(), expected[1])


def test_state_dict_round_trip_continues_identically():
    rule = _trained_rule()
    (x, y) = _regression()
    models = [nn.Linear(10, 1) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    first = LearnedOptimizer(models[0].parameters(), rule)

    def train(model, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step(loss.item())

    train(models[0], first, 5)
    models[1].load_state_dict(models[0].state_dict())
    second = LearnedOptimizer(models[1].parameters(), _trained_rule())
    second.update_rule.load_state_dict(rule.state_dict())
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.state_dict()["state"][0]["rule_state"]["history"],
                       first.state_dict()["state"][0]["rule_state"]["history"])
    train(models[0], first, 5)
    train(models[1], second, 5)
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)


def test_lr_scheduler_drives_the_group_lr():
    model, (x, y) = nn.Linear(10, 1), _regression()
    optimizer = Opt2VecOptimizer(model.parameters(), base_lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    lrs = []
    for _ in range(3):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step(loss.item())
        optimizer.zero_grad()
        lrs.append(float(optimizer.last_info["lr"] / optimizer.last_info["lr_scale"]))
        scheduler.step()
    assert lrs == pytest.approx([0.01, 0.005, 0.0025])


class Regressor(pl.LightningModule):
    def __init__(self, ckpt_path=None):
        super().__init__()
        self.net, self.ckpt_path = nn.Linear(10, 1), ckpt_path

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        if self.ckpt_path:
            return load_learned_optimizer(self.ckpt_path, self.parameters())
        return Opt2VecOptimizer(self.parameters(), base_lr=0.01)


def test_trained_optimizer_loads_from_a_fit_checkpoint_and_trains_a_lightning_module(tmp_path):
    module = L2OModule(Opt2Vec())
    trainer = tiny_trainer(tmp_path, max_steps=3)
    trainer.fit(module, tiny_datamodule())
    ckpt = tmp_path / "meta.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_learned_optimizer(ckpt, nn.Linear(2, 2).parameters())
    for p, q in zip(loaded.update_rule.parameters(), module.meta_optimizer.parameters()):
        assert torch.equal(p, q)

    x, y = _regression()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    for ckpt_path in (None, ckpt):
        regressor = Regressor(ckpt_path)
        before = nn.functional.mse_loss(regressor.net(x), y).item()
        pl.Trainer(max_epochs=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(regressor, loader)
        assert nn.functional.mse_loss(regressor.net(x), y).item() < 0.2 * before


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint not found"):
        load_learned_optimizer(tmp_path / "missing.ckpt", [nn.Parameter(torch.zeros(1))])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match="not written by lightning_l2o"):
        load_learned_optimizer(foreign, [nn.Parameter(torch.zeros(1))])


LEARNED_RULES = {
    "opt2vec": _trained_rule,
    "ff": lambda: FFMetaOptimizer(hidden_dim=8, num_layers=1),
    "lstm": lambda: LSTMMetaOptimizer(hidden_dim=8),
    "pna": lambda: PNAMetaOptimizer(hidden_dim=8, num_layers=2),
    "pna_lstm": lambda: PNAMetaOptimizer(hidden_dim=8, num_layers=2, recurrent=True),
    "rt": lambda: RelationalTransformerMetaOptimizer(hidden_dim=8, num_layers=1, heads=2),
    "nfn": lambda: NFNMetaOptimizer(hidden_dim=8, num_layers=1, optimizee_depth=2),  # the 2-layer models here
}
SCHEDULERS = {
    "warm-up from 0": lambda opt: lr_scheduler.LambdaLR(opt, lambda step: min(step / 4, 1.0)),
    "cosine to 0": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.0),
    "linear to 0": lambda opt: lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=4),
    "one cycle": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10, cycle_momentum=False),
    "step": lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.1),
}


def _rule_state(optimizer: LearnedOptimizer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in next(iter(optimizer.state.values()))["rule_state"].items()}


@pytest.mark.parametrize("rule", LEARNED_RULES)
@pytest.mark.parametrize("schedule", SCHEDULERS)
def test_every_scheduler_works_with_every_learned_optimizer_and_lr_0_does_not_move(rule, schedule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = LearnedOptimizer(model, LEARNED_RULES[rule](), lr=0.01)
    scheduler = SCHEDULERS[schedule](optimizer)
    x, y = _regression()
    lr_zero_steps = 0
    for _ in range(9):
        lr = optimizer.param_groups[0]["lr"]
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step(loss.item())
        scheduler.step()
        if lr == 0:
            lr_zero_steps += 1
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert all(torch.isfinite(v).all() for v in _rule_state(optimizer).values())
    assert optimizer.nonfinite_steps == 0
    assert lr_zero_steps > 0 or schedule in ("one cycle", "step")


@pytest.mark.parametrize("rule", LEARNED_RULES)
def test_a_non_finite_gradient_leaves_parameters_and_state_unchanged_warns_once_and_is_counted(rule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = LearnedOptimizer(model, LEARNED_RULES[rule](), lr=0.01)
    x, y = _regression()

    def step(poison: bool) -> None:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if poison:
            model[0].weight.grad[0, 0] = float("nan")
        optimizer.step(loss.item())

    step(False)
    params, state = [p.detach().clone() for p in model.parameters()], _rule_state(optimizer)
    with pytest.warns(RuntimeWarning, match="non-finite gradient or loss"):
        step(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(True)
    assert optimizer.nonfinite_steps == 2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert all(torch.equal(v, state[k]) for k, v in _rule_state(optimizer).items())
    step(False)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


def _train(optimizer: LearnedOptimizer, model: nn.Module, steps: int = 5) -> list[torch.Tensor]:
    x, y = _regression()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step(loss.item())
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("rule", ["ff", "lstm", "pna", "pna_lstm", "rt", "nfn"])
def test_a_chunked_rule_deploys_like_the_unchunked_one(rule):
    """A 97-parameter model, one chunk against chunks of 16 (the LSTM's state carried per chunk)."""
    whole = trained_looking(LEARNED_RULES[rule]())
    results = []
    for update_rule in (whole, whole.with_config(chunk_size=16)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1))
        results.append(_train(LearnedOptimizer(model, update_rule, lr=0.01), model))
    for chunked, expected in zip(*results, strict=True):
        torch.testing.assert_close(chunked, expected, rtol=1e-6, atol=1e-6)


def test_load_learned_optimizer_runs_a_trained_network_in_bfloat16_within_a_few_percent():
    models = [nn.Linear(10, 1) for _ in range(3)]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    before = [p.detach().clone() for p in models[0].parameters()]
    optimizers = [load_learned_optimizer("pretrained:ff_fashion_mnist_task17", model, network_dtype=dtype)
                  for model, dtype in zip(models, [None, "bfloat16", "float32"])]
    assert [o.update_rule.config["network_dtype"] for o in optimizers] == ["float32", "bfloat16", "float32"]
    for optimizer in optimizers[1:]:
        for p, q in zip(optimizer.update_rule.parameters(), optimizers[0].update_rule.parameters(), strict=True):
            assert torch.equal(p, q)
    fp32, bf16, rebuilt = (_train(o, m, steps=1) for o, m in zip(optimizers, models))
    assert all(torch.equal(p, q) for p, q in zip(rebuilt, fp32))
    updates = [torch.cat([(p - b).view(-1) for p, b in zip(params, before)]) for params in (fp32, bf16)]
    assert 0 < (updates[1] - updates[0]).norm() / updates[0].norm() < 0.05
    with pytest.raises(ConfigError, match="Opt2Vec has no per-parameter network; leave network_dtype unset"):
        load_learned_optimizer("pretrained:opt2vec_mixed", models[0], network_dtype="bfloat16")
    with pytest.raises(ConfigError, match="network_dtype must be one of float32, bfloat16, got 'half'"):
        load_learned_optimizer("pretrained:ff_fashion_mnist_task17", models[0], network_dtype="half")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_the_finiteness_guard_finds_one_bad_element_anywhere(bad):
    for n in (1, 7, 64, 1000, 65_537):
        for position in {0, n // 2, n - 1, max(n - 9, 0)}:
            x = torch.randn(n)
            assert _finite(x, torch.empty(0))
            x[position] = bad
            assert not _finite(torch.randn(3), x), (n, position)
            assert not _finite(x.view(1, n).to(torch.bfloat16))
