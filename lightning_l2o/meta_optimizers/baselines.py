"""Hand-designed optimizers in the meta-optimizer form (no learnable parameters)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import (
    MetaOptimizer,
    State,
    check_fraction,
    check_positive,
)
from lightning_l2o.params import ParamSpace


class SGDMomentum(MetaOptimizer):
    """``m <- momentum * m + g``; ``theta <- theta - lr * m`` (``torch.optim.SGD`` with momentum)."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        check_positive("SGDMomentum", lr=lr)
        check_fraction("SGDMomentum", momentum=momentum)
        super().__init__(lr=lr, momentum=momentum)
        self.lr, self.momentum = lr, momentum

    @property
    def name(self) -> str:
        return "sgd_momentum"

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {"momentum_buffer": params.new_zeros(params.shape)}

    def forward(self, params: Tensor, grads: Tensor, loss: Tensor, state: State, space: ParamSpace, lr: float | Tensor):
        buf = self.momentum * state["momentum_buffer"] + grads
        return params - lr * buf, {"momentum_buffer": buf}, {}


class Adam(MetaOptimizer):
    """Adam (Kingma & Ba, 2015) with bias correction, as ``torch.optim.Adam``; ``weight_decay`` is decoupled
    (``theta <- theta (1 - lr wd)`` before the Adam step, as ``torch.optim.AdamW``). ``warmup_steps`` W > 0 scales
    the lr of step ``t`` (from 1) by ``min(1, t / W)``, as ``torch.optim.lr_scheduler.LambdaLR`` with
    ``lambda s: min(1, (s + 1) / W)`` would."""

    def __init__(
        self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        check_positive(type(self).__name__, lr=lr, eps=eps)
        check_fraction(type(self).__name__, beta1=beta1, beta2=beta2)
        if weight_decay < 0 or warmup_steps < 0:
            raise ConfigError(f"{type(self).__name__}: weight_decay and warmup_steps must be >= 0, got "
                              f"{weight_decay}, {warmup_steps}")
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, warmup_steps=warmup_steps)
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, beta1, beta2, eps, weight_decay
        self.warmup_steps = warmup_steps

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        zeros = params.new_zeros(params.shape)
        return {"exp_avg": zeros, "exp_avg_sq": zeros.clone(), "step": params.new_zeros(())}

    def forward(self, params: Tensor, grads: Tensor, loss: Tensor, state: State, space: ParamSpace, lr: float | Tensor):
        m_hat, v_hat, new_state = self.moments(grads, state)
        if self.warmup_steps:
            lr = lr * (new_state["step"] / self.warmup_steps).clamp(max=1.0)
        return self.apply_step(params, m_hat, v_hat.sqrt(), lr), new_state, {}

    def moments(self, grads: Tensor, state: State) -> tuple[Tensor, Tensor, State]:
        """The bias-corrected moments ``m_hat, v_hat`` ``(n,)`` after ``grads``, and the new state."""
        step = state["step"] + 1
        m = self.beta1 * state["exp_avg"] + (1 - self.beta1) * grads
        v = self.beta2 * state["exp_avg_sq"] + (1 - self.beta2) * grads.square()
        return m / (1 - self.beta1**step), v / (1 - self.beta2**step), {"exp_avg": m, "exp_avg_sq": v, "step": step}

    def apply_step(self, params: Tensor, m_hat: Tensor, denominator: Tensor, lr: float | Tensor) -> Tensor:
        """``params (n,)`` after decoupled weight decay and the step ``-lr m_hat / (denominator + eps)``; Adam's
        denominator is ``sqrt(v_hat)``."""
        decayed = params * (1 - lr * self.weight_decay) if self.weight_decay else params
        return decayed - lr * m_hat / (denominator + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW`` (default wd 0.01)."""

    def __init__(
        self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__(lr, beta1, beta2, eps, weight_decay, warmup_steps)


BASELINES: dict[str, type[MetaOptimizer]] = {"adam": Adam, "adamw": AdamW, "sgd_momentum": SGDMomentum}
DECAYED_BASELINES = frozenset({"adamw"})
"""The baselines whose weight decay is their own option, tuned with their lr (``adam`` runs without any)."""


@dataclass(frozen=True)
class BaselineSetting:
    """What tuning chooses for a baseline: its ``lr`` and, for one of :data:`DECAYED_BASELINES`, its
    ``weight_decay`` (``None``: the baseline has none to tune)."""

    lr: float
    weight_decay: float | None = None

    def __str__(self) -> str:
        return f"lr {self.lr:g}" + ("" if self.weight_decay is None else f", weight decay {self.weight_decay:g}")

    def build(self, name: str) -> MetaOptimizer:
        """The baseline ``name`` at this setting (:func:`build_baseline`)."""
        return build_baseline(name, self.lr, self.weight_decay)


def baseline_settings(name: str, lr_grid: Sequence[float], weight_decay_grid: Sequence[float]) -> list[BaselineSetting]:
    """The settings tuning tries for baseline ``name``: every lr of ``lr_grid``, crossed with every weight decay of
    ``weight_decay_grid`` for one of :data:`DECAYED_BASELINES`."""
    if name in DECAYED_BASELINES:
        return [BaselineSetting(lr, weight_decay) for weight_decay in weight_decay_grid for lr in lr_grid]
    return [BaselineSetting(lr) for lr in lr_grid]


def build_baseline(name: str, lr: float, weight_decay: float | None = None) -> MetaOptimizer:
    """The hand-designed optimizer called ``name`` at learning rate ``lr`` and, for one of
    :data:`DECAYED_BASELINES`, ``weight_decay`` (``None``: its default)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline '{name}'; choose from: {', '.join(BASELINES)}")
    if weight_decay is None:
        return BASELINES[name](lr=lr)
    if name not in DECAYED_BASELINES:
        raise ConfigError(f"baseline '{name}' has no weight decay to set; only {sorted(DECAYED_BASELINES)} have one")
    return BASELINES[name](lr=lr, weight_decay=weight_decay)
