"""L2OModule: meta-trains any MetaOptimizer with truncated unrolls and meta-tests it against tuned baselines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch.nn.parallel import DistributedDataParallel

from lightning_l2o.checkpoints import CHECKPOINT_KEY, FIX, FinalCheckpoint, check_compatible, meta_optimizer_config
from lightning_l2o.errors import ConfigError
from lightning_l2o.estimators import GradientEstimator, SegmentEstimate, TruncatedBackprop
from lightning_l2o.evaluation import (
    DIVERGENCE_FACTOR,
    WEIGHT_DECAY_GRID,
    Trajectory,
    best_settings,
    grid_search,
    meta_test,
    summarize,
)
from lightning_l2o.meta_optimizers import BaselineSetting, MetaOptimizer
from lightning_l2o.meta_optimizers.base import class_path
from lightning_l2o.meta_optimizers.baselines import BASELINES
from lightning_l2o.tasks import Segment, TaskSpec, build_task
from lightning_l2o.unroll import InnerState


class L2OModule(pl.LightningModule):
    """Meta-trains ``meta_optimizer`` (manual optimization) and meta-tests it.

    Training: each batch is a meta-batch, a list of :class:`~lightning_l2o.tasks.Segment` of K inner steps, one per
    slot (``data.meta_batch_size``); the slots' meta-gradients are averaged into one outer update. Each slot's inner
    state (optimizee parameters, optimizer state, history, batch generator) is carried from one segment of its
    task to the next and detached in between; a new task starts a fresh optimizee. The segment's
    meta-gradient comes from :attr:`estimator` (by default :class:`~lightning_l2o.estimators.TruncatedBackprop`:
    the meta-loss backpropagated, optionally in windows of ``backprop_window`` steps; or
    :class:`~lightning_l2o.estimators.PersistentES`, unbiased over the whole horizon); the module
    clips it and applies it with Adam. A non-finite meta-loss, inner state or meta-gradient in any slot skips the
    outer update, is counted in ``train/nonfinite_segments`` and restarts that slot's task. A meta-batch whose
    segments all lie before the objective's window (``final_fraction`` < 1) has no meta-gradient to apply: its
    tasks carry on, the outer optimizer does not step (outer steps, ``trainer.max_steps``, count updates), and
    ``train/uncounted_segments`` counts it.

    Under DDP each rank trains its own optimizees (its own task stream). The ranks agree on every skip: a segment
    non-finite on any rank skips the outer update on all of them (that rank restarts its task, the others carry
    on with theirs); otherwise the meta-gradients are averaged across ranks once, after all of a segment's backward
    passes (DDP's own per-backward all-reduce is switched off: it would wait forever on a rank that skipped).
    Checkpoints hold every rank's and slot's optimizee.

    Validation and test: every held-out task is trained for its horizon by the learned rule and by
    each of ``baselines`` at the setting that is best on the validation tasks of its family (its lr searched on
    ``lr_grid``, crossed with ``weight_decay_grid`` for a baseline with weight decay: ``adamw``), without
    meta-gradients. Trajectories are kept in :attr:`meta_test_trajectories` for
    the callbacks that plot and log them.

    Args:
        meta_optimizer: the learned update rule to meta-train.
        estimator: how each segment's meta-gradient is estimated (meta-loss, lookahead, log losses, windows),
            e.g. ``{class_path: lightning_l2o.estimators.PersistentES, init_args: {num_pairs: 8}}``; ``null``:
            ``TruncatedBackprop()`` (the mean training loss over each segment, backpropagated through it).
        outer_lr: learning rate of the outer Adam.
        weight_decay: Adam weight decay on the meta-parameters.
        gradient_clip_val: clip the meta-gradient's norm to this value (``null``: no clipping).
        cosine_schedule: decay ``outer_lr`` to zero over ``trainer.max_steps`` with a cosine.
        baselines: hand-designed optimizers to compare with (``adam``, ``adamw``, ``sgd_momentum``).
        lr_grid: learning rates tried for each baseline.
        weight_decay_grid: weight decays tried, with each lr, for a baseline that has one (``adamw``).
        max_consecutive_nonfinite: stop with an error after this many skipped segments in a row.
    """

    def __init__(
        self,
        meta_optimizer: MetaOptimizer,
        estimator: GradientEstimator | None = None,
        outer_lr: float = 1e-3,
        weight_decay: float = 0.0,
        gradient_clip_val: float | None = 1.0,
        cosine_schedule: bool = False,
        baselines: Sequence[str] = ("adam", "adamw", "sgd_momentum"),
        lr_grid: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        weight_decay_grid: Sequence[float] = WEIGHT_DECAY_GRID,
        max_consecutive_nonfinite: int = 50,
    ) -> None:
        super().__init__()
        if not meta_optimizer.is_learned:
            raise ConfigError(f"model.meta_optimizer: {type(meta_optimizer).__name__} has no parameters to learn")
        self.estimator = TruncatedBackprop() if estimator is None else estimator
        if not outer_lr > 0 or weight_decay < 0 or (gradient_clip_val is not None and not gradient_clip_val > 0):
            raise ConfigError("model.outer_lr must be > 0, model.weight_decay >= 0 and model.gradient_clip_val > 0 "
                              f"or null; got {outer_lr}, {weight_decay}, {gradient_clip_val}")
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown or not lr_grid or min(lr_grid) <= 0 or not weight_decay_grid or min(weight_decay_grid) < 0:
            raise ConfigError(f"model.baselines must be names from {list(BASELINES)} (unknown: {unknown}), "
                              f"model.lr_grid a non-empty list of positive learning rates and model.weight_decay_grid "
                              f"one of weight decays >= 0; got {list(lr_grid)}, {list(weight_decay_grid)}")
        self.save_hyperparameters(ignore=["meta_optimizer", "estimator"])
        self.save_hyperparameters({"meta_optimizer": meta_optimizer_config(meta_optimizer),
                                   "estimator": {"class_path": class_path(type(self.estimator)),
                                                 "init_args": self.estimator.config}})
        self.automatic_optimization = False
        self.meta_optimizer = meta_optimizer
        self.meta_test_trajectories: list[Trajectory] = []
        self.nonfinite_segments = 0
        self.uncounted_segments = 0
        self._consecutive_nonfinite = 0
        self._inners: list[InnerState | None] = []  # one optimizee per meta-batch slot
        self._restored_inners: list[dict[str, Any] | None] = []
        self._slot_estimators = [self.estimator]
        self._val_grid: dict[tuple[str, BaselineSetting, str], Trajectory] = {}
        self._tuned_settings: dict[tuple[str, str], BaselineSetting] = {}

    # ----------------------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        """Before any step: refuse a task template that this stage runs the rule on (``fit``: the train tasks, and
        the val tasks unless validation is off; ``validate``: the val tasks; ``test``: the test tasks) and whose
        optimizee the rule cannot update (:meth:`~lightning_l2o.meta_optimizers.MetaOptimizer.check_space`),
        naming the template."""
        datamodule = getattr(self.trainer, "datamodule", None)
        keys = {"fit": ("train_tasks", "val_tasks") if self.trainer.limit_val_batches else ("train_tasks",),
                "validate": ("val_tasks",), "test": ("test_tasks",)}.get(stage, ())
        for key in keys:
            for i, template in enumerate(getattr(datamodule, key, ())):
                try:
                    self.meta_optimizer.check_space(build_task(template).space)
                except ConfigError as err:
                    raise ConfigError(f"data.{key}[{i}] ({template.architecture}): {err}") from None

    def configure_callbacks(self) -> list[pl.Callback]:
        return [FinalCheckpoint()]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(
            self.meta_optimizer.parameters(), lr=self.hparams.outer_lr, weight_decay=self.hparams.weight_decay
        )
        if not self.hparams.cosine_schedule:
            return optimizer
        if self.trainer.max_steps is None or self.trainer.max_steps <= 0:
            raise ConfigError("model.cosine_schedule needs trainer.max_steps > 0 to know how long to decay")
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def training_step(self, segments: list[Segment], batch_idx: int) -> torch.Tensor | None:
        optimizer = self.optimizers()
        model = self.trainer.strategy.model
        estimates = []
        with model.no_sync() if isinstance(model, DistributedDataParallel) else nullcontext():
            for slot, segment in enumerate(segments):
                state = self._inner_state_for(slot, segment.task)
                estimator = self._estimator_for(slot)
                estimator.stream = self.global_rank * len(segments) + slot  # what its random draws are offset by
                estimates.append(estimator.estimate(self.meta_optimizer, state, segment.length,
                                                    lambda loss: self.manual_backward(loss / len(segments))))
        grads_finite = all(bool(torch.isfinite(p.grad).all())
                           for p in self.meta_optimizer.parameters() if p.grad is not None)
        finite = grads_finite and all(e is not None for e in estimates)
        finite, counted = self._average_meta_gradient(finite, finite and any(e.counted for e in estimates))
        if not finite:
            return self._skip_nonfinite(optimizer, [s.task for s in segments],
                                        [e.state if grads_finite and e is not None else None for e in estimates])
        if not counted:
            return self._skip_uncounted(optimizer, estimates)
        if self.hparams.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self._inners = [e.state for e in estimates]
        self._consecutive_nonfinite = 0
        meta_loss = torch.stack([e.meta_loss for e in estimates]).mean()
        self.log("train/meta_loss", meta_loss, prog_bar=True)
        self._log_inner_loss(estimates)
        self.log("train/outer_lr", optimizer.param_groups[0]["lr"])
        self.log("train/nonfinite_segments", float(self.nonfinite_segments))
        for key in estimates[0].info:
            self.log(f"train/{key}", torch.stack([e.info[key] for e in estimates]).mean())
        return meta_loss

    def _inner_state_for(self, slot: int, spec: TaskSpec) -> InnerState:
        """Continue the current optimizee of ``spec`` in meta-batch slot ``slot`` (or the one restored from a
        checkpoint), else start one."""
        key = (spec.index, spec.seed)
        self._inners += [None] * (slot + 1 - len(self._inners))
        restored = self._restored_inners[slot] if slot < len(self._restored_inners) else None
        if restored is not None:
            self._restored_inners[slot] = None
            if (restored["spec"]["index"], restored["spec"]["seed"]) == key:
                self._inners[slot] = InnerState.from_state_dict(restored, self.device)
        current = self._inners[slot]
        if current is None or (current.task.spec.index, current.task.spec.seed) != key:
            self._inners[slot] = InnerState.start(spec, self.meta_optimizer, self.device)
        return self._inners[slot]

    def _estimator_for(self, slot: int) -> GradientEstimator:
        """The estimator of meta-batch slot ``slot`` (slot 0: :attr:`estimator`; the others are built from its
        config)."""
        while len(self._slot_estimators) <= slot:
            self._slot_estimators.append(type(self.estimator)(**self.estimator.config))
        return self._slot_estimators[slot]

    def _average_meta_gradient(self, finite: bool, counted: bool) -> tuple[bool, bool]:
        """Whether every rank's segment was ``finite``, and whether any rank's was ``counted`` (in the objective's
        window); if both, average the meta-gradient across ranks.

        One all-reduce of the gradients with each rank's two verdicts appended (a non-finite rank sends zeros), so
        the ranks agree on a skip and the average in a single collective; nothing to do on one process.
        """
        world_size = self.trainer.world_size
        if world_size == 1:
            return finite, counted
        params = list(self.meta_optimizer.parameters())
        grads = [p.grad if finite and p.grad is not None else torch.zeros_like(p) for p in params]
        verdicts = torch.tensor([float(finite), float(counted)], device=self.device)
        packed = torch.cat([*(g.flatten() for g in grads), verdicts])
        torch.distributed.all_reduce(packed)
        all_finite, any_counted = packed[-2].item() == world_size, packed[-1].item() > 0
        if all_finite and any_counted:
            for p, g in zip(params, (packed[:-2] / world_size).split([p.numel() for p in params])):
                p.grad = g.view_as(p)
        return all_finite, any_counted

    def _log_inner_loss(self, estimates: list[SegmentEstimate]) -> None:
        """``train/inner_loss``: the optimizees' mean training loss over the meta-batch's segments."""
        self.log("train/inner_loss", torch.stack([e.inner_losses.mean() for e in estimates]).mean())

    def _skip_uncounted(self, optimizer: Any, estimates: list[SegmentEstimate]) -> torch.Tensor:
        """No outer update for a meta-batch (on every rank) with no loss in the objective's window; its tasks carry
        on, and their inner loss is logged (there is no meta-loss to log: none of its losses is in the objective)."""
        optimizer.zero_grad()
        self._inners = [e.state for e in estimates]
        self._consecutive_nonfinite = 0
        self.uncounted_segments += 1
        self.log("train/uncounted_segments", float(self.uncounted_segments))
        self._log_inner_loss(estimates)
        return torch.stack([e.meta_loss for e in estimates]).mean()

    def _skip_nonfinite(self, optimizer: Any, specs: list[TaskSpec], states: list[InnerState | None]) -> None:
        """Skip the outer update (agreed by all ranks); ``states``: each slot's finite state to carry on, or
        ``None`` where that slot's segment was non-finite (its task restarts)."""
        optimizer.zero_grad()
        self.nonfinite_segments += 1
        self._consecutive_nonfinite += 1
        self.log("train/nonfinite_segments", float(self.nonfinite_segments))
        if self._consecutive_nonfinite >= self.hparams.max_consecutive_nonfinite:
            raise RuntimeError(
                f"{self._consecutive_nonfinite} segments in a row had a non-finite meta-loss or meta-gradient "
                f"(last tasks {[spec.name for spec in specs]}); lower model.outer_lr or the meta-optimizer's lr, "
                f"or set model.gradient_clip_val"
            )
        self._inners = [state if state is not None else InnerState.start(spec, self.meta_optimizer, self.device)
                        for spec, state in zip(specs, states)]

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Called on every rank (``trainer.save_checkpoint`` is collective): gathers each rank's optimizee."""
        inners = [inner.state_dict() if inner is not None else None for inner in self._inners]
        checkpoint[CHECKPOINT_KEY] = {
            "meta_optimizer": meta_optimizer_config(self.meta_optimizer),
            "inner_states": self._gather_from_ranks(inners),
            "estimator_states": self._gather_from_ranks([e.state_dict() for e in self._slot_estimators]),
            "nonfinite_segments": self.nonfinite_segments,
            "uncounted_segments": self.uncounted_segments,
        }

    def _gather_from_ranks(self, value: Any) -> list[Any]:
        """``[value of rank 0, value of rank 1, ...]``, tensors on the CPU."""
        value = apply_to_collection(value, torch.Tensor, lambda t: t.cpu())
        if self._trainer is None or self.trainer.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            raise ConfigError(f"the checkpoint was not written by lightning_l2o (no '{CHECKPOINT_KEY}' entry); {FIX}")
        check_compatible(saved["meta_optimizer"], self.meta_optimizer)
        states = saved["inner_states"] if "inner_states" in saved else [saved["inner_state"]]  # single-process format
        rank = self.global_rank if self._trainer is not None else 0
        self._restored_inners = _slots(states[rank]) if rank < len(states) else []  # an added rank starts afresh
        estimator_states = saved.get("estimator_states", [])
        for slot, state in enumerate(_slots(estimator_states[rank]) if rank < len(estimator_states) else []):
            if state:
                self._estimator_for(slot).load_state_dict(state)
        self.nonfinite_segments = saved["nonfinite_segments"]
        self.uncounted_segments = saved.get("uncounted_segments", 0)  # absent from checkpoints before the count

    # ----------------------------------------------------------------------------------------- meta-test
    def on_validation_epoch_start(self) -> None:
        self.meta_test_trajectories = []

    def validation_step(self, spec: TaskSpec, batch_idx: int) -> None:
        self.meta_test_trajectories.append(meta_test(self.meta_optimizer, spec, device=self.device))
        if not any(key[2] == spec.name for key in self._val_grid):
            self._val_grid.update(grid_search(self.hparams.baselines, self.hparams.lr_grid, [spec], self.device,
                                              self.hparams.weight_decay_grid))

    def on_validation_epoch_end(self) -> None:
        names = {t.spec.name for t in self.meta_test_trajectories}
        grid = {key: traj for key, traj in self._val_grid.items() if key[2] in names}
        chosen = best_settings(grid)
        self.meta_test_trajectories += [
            traj for (name, setting, _), traj in grid.items() if chosen[(name, traj.spec.family)] == setting
        ]
        self._log_meta_test("val")

    def on_test_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "val_specs"):
            raise ConfigError("test needs a TaskDataModule (data: class_path: datamodules.TaskDataModule): "
                              "baselines' settings are tuned on its validation tasks")
        self._tuned_settings = best_settings(grid_search(
            self.hparams.baselines, self.hparams.lr_grid, datamodule.val_specs(), self.device,
            self.hparams.weight_decay_grid,
        ))

    def on_test_epoch_start(self) -> None:
        self.meta_test_trajectories = []

    def test_step(self, spec: TaskSpec, batch_idx: int) -> None:
        self.meta_test_trajectories.append(meta_test(self.meta_optimizer, spec, device=self.device))
        for name in self.hparams.baselines:
            setting = self._tuned_settings[(name, spec.family)]
            self.meta_test_trajectories.append(
                meta_test(setting.build(name), spec, device=self.device))

    def on_test_epoch_end(self) -> None:
        for traj in self.meta_test_trajectories:
            self._log_final(f"test/{traj.spec.name}/{traj.method}", traj.final_loss, traj.final["test_accuracy"])
        self._log_meta_test("test")

    def _log_meta_test(self, stage: str) -> None:
        """Per architecture and method: mean final loss and accuracy; ``{stage}/loss``: the learned rule's mean log10
        final loss."""
        for row in summarize(self.meta_test_trajectories):
            prefix = f"{stage}/{row['architecture']}/{row['method']}"
            self._log_final(prefix, row["final_loss_mean"], row["test_accuracy_mean"])
            self.log(f"{prefix}/diverged", float(row["diverged"]))
        learned = [t for t in self.meta_test_trajectories if t.method == self.meta_optimizer.name]
        worst = math.log10(DIVERGENCE_FACTOR)
        logs = [min(math.log10(max(t.final_loss, 1e-12)), worst) for t in learned]
        if logs:
            self.log(f"{stage}/loss", sum(logs) / len(logs), prog_bar=True)

    def _log_final(self, prefix: str, loss: float, accuracy: float) -> None:
        self.log(f"{prefix}/final_loss", loss)
        if math.isfinite(accuracy):
            self.log(f"{prefix}/test_accuracy", accuracy)


def _slots(saved: Any) -> list[Any]:
    """A rank's saved per-slot list (a checkpoint from before meta-batches holds one slot's value bare)."""
    return saved if isinstance(saved, list) else [saved]
