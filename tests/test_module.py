import copy
import itertools

import pytest
import pytorch_lightning as pl
import torch

from lightning_l2o import (
    FFMetaOptimizer,
    L2OModule,
    LSTMMetaOptimizer,
    NFNMetaOptimizer,
    Opt2Vec,
    PNAMetaOptimizer,
    RelationalTransformerMetaOptimizer,
)
from lightning_l2o.errors import ConfigError
from lightning_l2o.estimators import PersistentES, TruncatedBackprop
from lightning_l2o.evaluation import meta_test
from lightning_l2o.meta_optimizers import AdamW
from lightning_l2o.tasks import TaskSpec
from lightning_l2o.unroll import InnerState
from tests.conftest import quadratic, tiny_datamodule, tiny_trainer


class PoisonedOpt2Vec(Opt2Vec):
    """Opt2Vec that returns NaN parameters on chosen forward calls (to exercise non-finite handling)."""

    def __init__(self, poison_calls=(), **kwargs):
        super().__init__(**kwargs)
        self.poison_calls, self.calls = set(poison_calls), 0

    def forward(self, params, grads, loss, state, space, lr):
        self.calls += 1
        new, state, info = super().forward(params, grads, loss, state, space, lr)
        return (new * float("nan") if self.calls in self.poison_calls else new), state, info


def test_meta_training_on_quadratics_beats_the_untrained_initialisation(tmp_path):
    datamodule = tiny_datamodule(train_tasks=[quadratic(50, dim=10)], epoch_length=100)
    module = L2OModule(Opt2Vec(), outer_lr=3e-3)
    untrained = copy.deepcopy(module.meta_optimizer)
    tiny_trainer(tmp_path, max_steps=100).fit(module, datamodule)
    held_out = [quadratic(50, dim=10).with_seed(s) for s in range(101, 109)]

    def mean_log_loss(rule):
        return torch.tensor([meta_test(rule, spec).final_loss for spec in held_out]).log10().mean()

    assert mean_log_loss(module.meta_optimizer) < mean_log_loss(untrained) - 0.2


def test_non_finite_segment_is_skipped_counted_and_the_task_restarted(tmp_path):
    # Segments have 10 inner steps; call 15 is inside the second segment.
    module = L2OModule(PoisonedOpt2Vec(poison_calls={15}))
    trainer = tiny_trainer(tmp_path, max_steps=4)
    trainer.fit(module, tiny_datamodule(train_tasks=[quadratic(60)]))
    assert module.nonfinite_segments == 1
    assert trainer.global_step == 4  # four successful outer updates; the poisoned segment was consumed without one
    assert all(torch.isfinite(p).all() for p in module.meta_optimizer.parameters())
    # Task horizon 60 = 6 segments; segment 1 was poisoned, so the restarted optimizee has trained segments 2-4.
    assert module._inners[0].step == 30
    assert trainer.callback_metrics["train/nonfinite_segments"] == 1


class ParamsAfterBatches(pl.Callback):
    def __init__(self) -> None:
        self.records = []  # (global_step, flat meta-parameters) after each batch
        self.inner_losses = []  # train/inner_loss as logged by each batch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        flat = torch.cat([p.detach().flatten() for p in module.meta_optimizer.parameters()]).clone()
        self.records.append((trainer.global_step, flat))
        self.inner_losses.append(float(trainer.callback_metrics["train/inner_loss"]))


@pytest.mark.parametrize("estimator", [lambda: TruncatedBackprop(final_fraction=0.5),
                                       lambda: PersistentES(num_pairs=2, final_fraction=0.5)], ids=["tbptt", "pes"])
def test_segments_before_the_objective_window_take_no_outer_step(tmp_path, estimator):
    # Horizon 60 in segments of 10; final_fraction 0.5 counts steps 31-60: segments 0-2 of each task have no loss in
    # the window (a zero meta-gradient), so outer updates 1-3 come from task 1's segments 3-5 and update 4 from task
    # 2's segment 3.
    module, capture = L2OModule(Opt2Vec(), estimator()), ParamsAfterBatches()
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[capture])
    trainer.fit(module, tiny_datamodule(train_tasks=[quadratic(60)]))
    assert [step for step, _ in capture.records] == [0, 0, 0, 1, 2, 3, 3, 3, 3, 4]
    assert module.uncounted_segments == 6 and module.nonfinite_segments == 0
    assert module._inners[0].step == 40  # the skipped segments' optimizee carried on
    for (step, params), (next_step, next_params) in itertools.pairwise(capture.records):
        assert torch.equal(params, next_params) == (step == next_step)  # parameters move exactly on an update
    assert trainer.callback_metrics["train/uncounted_segments"] == 6
    assert len(set(capture.inner_losses)) == len(capture.inner_losses)  # logged on every batch, uncounted ones too


class GradientsAtFirstStep(pl.Callback):
    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if trainer.global_step == 0:
            self.grads = [p.grad.clone() for p in module.meta_optimizer.parameters()]


def test_a_meta_batch_averages_the_meta_gradients_of_its_slots(tmp_path):
    datamodule = tiny_datamodule(meta_batch_size=3)
    pl.seed_everything(0)
    module = L2OModule(Opt2Vec())
    rule = copy.deepcopy(module.meta_optimizer)
    expected = [torch.zeros_like(p) for p in rule.parameters()]
    segments = next(iter(datamodule.train_dataloader()))
    for segment in segments:
        rule.zero_grad()
        TruncatedBackprop().estimate(rule, InnerState.start(segment.task, rule), segment.length,
                                     lambda loss: loss.backward())
        expected = [e + p.grad / len(segments) for e, p in zip(expected, rule.parameters())]
    capture = GradientsAtFirstStep()
    trainer = tiny_trainer(tmp_path, max_steps=2, callbacks=[capture], gradient_clip_val=None)
    trainer.fit(L2OModule(copy.deepcopy(rule), gradient_clip_val=None), datamodule)
    for got, want in zip(capture.grads, expected):
        torch.testing.assert_close(got, want)
    assert any(not torch.allclose(want, p.grad) for want, p in zip(expected, rule.parameters()))  # slots differ


def test_a_non_finite_slot_skips_the_outer_update_and_restarts_only_its_task(tmp_path):
    module = L2OModule(PoisonedOpt2Vec(poison_calls={15}))  # inside slot 1's first segment (10 steps a slot)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, tiny_datamodule(train_tasks=[quadratic(60)], meta_batch_size=2))
    assert module.nonfinite_segments == 1 and trainer.global_step == 2
    assert [inner.step for inner in module._inners] == [30, 20]  # slot 0 carried on, slot 1 restarted


def test_persistent_non_finite_losses_stop_with_a_clear_error(tmp_path):
    module = L2OModule(PoisonedOpt2Vec(poison_calls=set(range(1, 10_000))), max_consecutive_nonfinite=3)
    with pytest.raises(RuntimeError, match="3 segments in a row had a non-finite"):
        tiny_trainer(tmp_path, max_steps=4).fit(module, tiny_datamodule())


def test_backprop_windows_and_lookahead_train(tmp_path):
    module = L2OModule(Opt2Vec(), TruncatedBackprop("lookahead", backprop_window=1))
    start = [p.detach().clone() for p in module.meta_optimizer.parameters()]
    tiny_trainer(tmp_path, max_steps=3).fit(module, tiny_datamodule())
    assert any(not torch.equal(a, b) for a, b in zip(start, module.meta_optimizer.parameters()))


def test_cosine_schedule_decays_the_outer_lr(tmp_path):
    module = L2OModule(Opt2Vec(), outer_lr=1e-2, cosine_schedule=True)
    trainer = tiny_trainer(tmp_path, max_steps=4)
    trainer.fit(module, tiny_datamodule())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, key",
    [({"outer_lr": -1.0}, "outer_lr"), ({"baselines": ["lion"]}, "baselines"), ({"lr_grid": []}, "lr_grid"),
     ({"weight_decay_grid": [-1.0]}, "weight_decay_grid")],
)
def test_bad_values_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        L2OModule(Opt2Vec(), **kwargs)


def test_validation_and_test_run_adamw_at_its_weight_decay_tuned_on_the_validation_tasks(tmp_path):
    """Validation keeps AdamW's best (lr, weight decay) of the grid on the val tasks; test runs AdamW at that
    setting, so its test trajectories are runs of AdamW with that weight decay."""
    module = L2OModule(Opt2Vec(), baselines=["adamw"], lr_grid=[0.1], weight_decay_grid=[0.0, 3.0])
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=1.0)
    datamodule = tiny_datamodule()
    trainer.validate(module, datamodule)
    kept = [t for t in module.meta_test_trajectories if t.method == "adamw"]
    assert len(kept) == 1 and len(module._val_grid) == 2
    best = min(module._val_grid.values(), key=lambda t: t.final_loss)
    assert torch.equal(kept[0].losses, best.losses)
    trainer.test(module, datamodule)
    for trajectory in (t for t in module.meta_test_trajectories if t.method == "adamw"):
        expected = meta_test(AdamW(lr=0.1, weight_decay=0.0), trajectory.spec)
        assert torch.equal(trajectory.losses, expected.losses)


def test_incompatible_checkpoint_is_refused_clearly():
    module = L2OModule(Opt2Vec(hidden_dim=8))
    checkpoint = {}
    L2OModule(Opt2Vec(hidden_dim=32)).on_save_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match="hidden_dim: checkpoint 32, config 8"):
        module.on_load_checkpoint(checkpoint)
    with pytest.raises(ConfigError, match="not written by lightning_l2o"):
        module.on_load_checkpoint({"state_dict": {}})


@pytest.mark.parametrize("rule", [Opt2Vec, lambda: FFMetaOptimizer(hidden_dim=8, num_layers=1),
                                  lambda: LSTMMetaOptimizer(hidden_dim=8),
                                  lambda: PNAMetaOptimizer(hidden_dim=8, num_layers=2),
                                  lambda: PNAMetaOptimizer(hidden_dim=8, num_layers=2, recurrent=True),
                                  lambda: RelationalTransformerMetaOptimizer(hidden_dim=8, num_layers=1, heads=2),
                                  lambda: NFNMetaOptimizer(hidden_dim=8, num_layers=1, optimizee_depth=1)],
                         ids=["opt2vec", "ff", "lstm", "pna", "pna_lstm", "rt", "nfn"])
def test_every_learned_rule_meta_trains_with_persistent_es(tmp_path, rule):
    module = L2OModule(rule(), PersistentES(num_pairs=2), outer_lr=1e-2)
    start = [p.detach().clone() for p in module.meta_optimizer.parameters()]
    regression = TaskSpec("regression", arch={"inputs": 4}, batch_size=16, horizon=20)
    tiny_trainer(tmp_path, max_steps=3).fit(module, tiny_datamodule(train_tasks=[regression]))
    assert module.hparams.estimator["class_path"] == "lightning_l2o.estimators.persistent_es.PersistentES"
    assert module.nonfinite_segments == 0 and module._inners[0].step == 10  # second segment of the second task
    assert not all(torch.equal(p, q) for p, q in zip(start, module.meta_optimizer.parameters()))
