"""The inner loop: optimizee training steps driven by an update rule, differentiable for meta-training."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import Info, MetaOptimizer, State
from lightning_l2o.tasks import Task, TaskSpec, build_task

MetaLoss = Literal["train", "lookahead"]
LookaheadBatch = Literal["fresh", "same"]


@dataclass
class InnerState:
    """Everything an optimizee's training carries from one step to the next.

    ``initial_loss``: the training loss at the optimizee's initial parameters (on its first batch), recorded by the
    first unroll that normalises losses by it (``None`` until then).
    """

    task: Task
    params: Tensor
    opt_state: State
    step: int
    generator: torch.Generator
    initial_loss: float | None = None

    @classmethod
    def start(cls, spec: TaskSpec, update_rule: MetaOptimizer, device: torch.device | str = "cpu") -> InnerState:
        """A freshly initialised optimizee of ``spec`` on ``device``."""
        task = build_task(spec).to(device)
        generator = task.generator()
        params = task.init_params(generator)
        return cls(task, params, update_rule.start_state(params, task.space, spec.horizon), 0, generator)

    def detached(self) -> InnerState:
        """The same state cut from the autograd graph: the boundary between truncations."""
        return replace(self, params=self.params.detach(), opt_state={k: v.detach() for k, v in self.opt_state.items()})

    def copy(self) -> InnerState:
        """An independent detached copy sharing the task; its batch generator continues from the same position, so
        the copy trains on the same batches as the original."""
        generator = torch.Generator(self.generator.device)
        generator.set_state(self.generator.get_state())
        return replace(self, params=self.params.detach().clone(),
                       opt_state={k: v.detach().clone() for k, v in self.opt_state.items()}, generator=generator)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.params).all()) and all(
            bool(torch.isfinite(v).all()) for v in self.opt_state.values()
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain types and tensors only (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "spec": self.task.spec.to_dict(),
            "params": self.params.detach().clone(),
            "opt_state": {k: v.detach().clone() for k, v in self.opt_state.items()},
            "step": self.step,
            "generator": self.generator.get_state(),
            "initial_loss": self.initial_loss,
        }

    @classmethod
    def from_state_dict(
        cls, data: dict[str, Any], device: torch.device | str = "cpu", task: Task | None = None
    ) -> InnerState:
        """The state ``data`` holds; ``task``: an already built task of the same spec to share (else one is built)."""
        task = task if task is not None else build_task(TaskSpec.from_dict(data["spec"])).to(device)
        generator = torch.Generator()
        generator.set_state(data["generator"])
        opt_state = {k: v.to(device) for k, v in data["opt_state"].items()}
        return cls(task, data["params"].to(device), opt_state, data["step"], generator, data.get("initial_loss"))


def inner_step(
    update_rule: MetaOptimizer, state: InnerState, lr: float | Tensor, create_graph: bool, track_update: bool = True
) -> tuple[InnerState, Tensor, tuple[Tensor, ...], Info]:
    """Sample a batch, take the gradient and apply ``update_rule`` once.

    Returns the new state, the loss *before* the update (scalar), the batch and the rule's info.
    ``create_graph`` keeps the gradient differentiable (needed when later updates are backpropagated
    through); ``track_update=False`` applies the rule without recording a graph (meta-test).
    """
    params = state.params if state.params.requires_grad else state.params.requires_grad_()
    batch = state.task.sample_batch(state.generator)
    loss = state.task.loss(params, batch)
    (grads,) = torch.autograd.grad(loss, params, create_graph=create_graph)
    # Without create_graph the loss's graph is freed; the rule then sees it as a constant, like the gradient.
    rule_loss = loss if create_graph else loss.detach()
    with torch.set_grad_enabled(track_update):
        new_params, opt_state, info = update_rule(params, grads, rule_loss, state.opt_state, state.task.space, lr)
    return replace(state, params=new_params, opt_state=opt_state, step=state.step + 1), loss, batch, info


@dataclass
class UnrollResult:
    """The meta-loss of a truncated unroll and the inner state it ends in (still attached to the graph)."""

    meta_loss: Tensor
    state: InnerState
    inner_losses: Tensor
    info: dict[str, Tensor]


def unroll(
    update_rule: MetaOptimizer,
    state: InnerState,
    num_steps: int,
    meta_loss: MetaLoss = "train",
    lookahead_batch: LookaheadBatch = "fresh",
    log_loss: bool = False,
    differentiable: bool = True,
    normalise_loss: bool = False,
    final_fraction: float = 1.0,
) -> UnrollResult:
    """Run ``num_steps`` inner steps from ``state`` and return the meta-loss.

    ``meta_loss``:
        - ``"train"``: mean training loss at the parameters after each update, each on the batch that the
          next inner step trains on (the last one on one more batch); the classic unrolled objective.
        - ``"lookahead"``: mean over steps of the loss right after each update on a ``fresh`` batch or on
          the ``same`` batch the update was computed from (one-step lookahead).

    ``log_loss`` averages ``log(loss)`` instead, so that tasks whose losses differ in scale weigh alike.
    ``normalise_loss`` divides every loss by the optimizee's :attr:`InnerState.initial_loss` (recorded from its
    first inner step), so that task families of different loss scales weigh alike in a mixture; a state that
    has none (a checkpoint from before the option) takes the loss before this segment's first update.
    ``final_fraction`` < 1 counts only the losses after the first ``(1 - final_fraction) T`` steps of the task's
    horizon ``T``: each counted term still weighs ``1 / num_steps``, so that the segments' meta-losses add up to
    the mean loss over the last ``final_fraction`` of the horizon (the loss at the end of training, which
    evaluations measure); a segment wholly before that window has a meta-loss of 0.

    Gradients are taken with ``create_graph=True`` only when ``num_steps > 1``: a single step starts from
    detached parameters, so its gradient has no dependence on the meta-parameters. ``differentiable=False``
    records no graph of the updates at all (zeroth-order estimators, which only need the meta-loss's value);
    the meta-loss and the state are then detached.
    """
    if num_steps < 1:
        raise ConfigError(f"unroll needs num_steps >= 1, got {num_steps}")
    create_graph = differentiable and num_steps > 1
    first_step = state.step
    terms, inner_losses, infos = [], [], []
    for i in range(num_steps):
        state, loss, batch, info = inner_step(update_rule, state, update_rule.lr, create_graph, differentiable)
        if normalise_loss and state.initial_loss is None:
            state = replace(state, initial_loss=max(float(loss.detach()), 1e-12))
        inner_losses.append(loss.detach())
        infos.append(info)
        if meta_loss == "train" and i > 0:
            terms.append(loss)
        elif meta_loss == "lookahead":
            eval_batch = batch if lookahead_batch == "same" else state.task.sample_batch(state.generator)
            terms.append(state.task.loss(state.params, eval_batch))
    if meta_loss == "train":
        terms.append(state.task.loss(state.params, state.task.sample_batch(state.generator)))
    scalar_info = {
        k: torch.stack([i[k].detach() for i in infos]).mean() for k, v in infos[0].items() if v.dim() == 0
    }
    terms = torch.stack(terms) / (state.initial_loss if normalise_loss else 1.0)
    terms = terms.clamp_min(1e-12).log() if log_loss else terms
    if final_fraction < 1.0:  # term j follows the segment's j-th update: step first_step + j of the horizon
        after = first_step + torch.arange(1, num_steps + 1, device=terms.device)
        terms = terms * (after > (1.0 - final_fraction) * state.task.spec.horizon).to(terms.dtype)
    meta = terms.mean()
    if not differentiable:
        meta, state = meta.detach(), state.detached()
    return UnrollResult(meta, state, torch.stack(inner_losses), scalar_info)
