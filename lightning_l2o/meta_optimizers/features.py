"""Per-parameter input features of the FF and LSTM meta-optimizers, computed for all parameters at once.

A feature set maps flat ``params`` and ``grads`` ``(n,)`` and its own state to features ``(n, F)``:

- ``kofinas`` (Kofinas et al., 2024): the parameter, the gradient and 5 momenta ``m <- beta m + g``
  (beta 0.5, 0.9, 0.99, 0.999, 0.9999), each through the log/sign preprocessing of Andrychowicz
  et al. (2016) with ``p = 10``: 14 features.
- ``metz`` (Metz et al., 2019; ``mlp_lopt`` in google/learned_optimization): the gradient, the parameter
  and 5 EMA momenta ``m <- d m + (1 - d) g`` (d 0.1, 0.5, 0.9, 0.99, 0.999), each divided by its
  root-mean-square over its own tensor, plus 11 features ``tanh(t / s - 1)`` of the step ``t`` for time
  scales ``s`` from 1 to 100000: 18 features.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import State
from lightning_l2o.params import ParamSpace

KOFINAS_BETAS = (0.5, 0.9, 0.99, 0.999, 0.9999)
METZ_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999)
METZ_TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
LOG_SIGN_P = 10.0
SECOND_MOMENT_EPS = 1e-5


def log_sign(x: Tensor, p: float = LOG_SIGN_P) -> Tensor:
    """Andrychowicz et al.'s preprocessing, ``(...,) -> (..., 2)``.

    ``(log|x| / p, sign x)`` where ``|x| >= exp(-p)``, else ``(-1, exp(p) x)``.
    """
    big = x.abs() >= math.exp(-p)
    log_part = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    sign_part = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([log_part, sign_part], dim=-1)


class FeatureSet(ABC):
    """Turns ``(params, grads, state)`` into per-parameter features ``(n, num_features)`` and a new state."""

    num_features: int
    default_step_scale: float

    @abstractmethod
    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        """State for flat ``params`` ``(n,)``: momenta and whatever else the features need."""

    @abstractmethod
    def __call__(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[Tensor, State]:
        """``params``, ``grads``: ``(n,)`` -> features ``(n, num_features)`` and the updated feature state."""


class KofinasFeatures(FeatureSet):
    """Parameter, gradient and 5 accumulated momenta, each log/sign preprocessed: 14 features."""

    num_features = 2 * (2 + len(KOFINAS_BETAS))
    default_step_scale = 0.01

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {"momenta": params.new_zeros(len(params), len(KOFINAS_BETAS))}

    def __call__(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[Tensor, State]:
        betas = torch.tensor(KOFINAS_BETAS, dtype=params.dtype, device=params.device)
        momenta = betas * state["momenta"] + grads[:, None]
        quantities = torch.cat([params[:, None], grads[:, None], momenta], dim=1)
        return log_sign(quantities).flatten(1), {"momenta": momenta}


class MetzFeatures(FeatureSet):
    """Gradient, parameter and 5 EMA momenta normalised per tensor, plus 11 tanh time features: 18 features."""

    num_features = 2 + len(METZ_DECAYS) + len(METZ_TIMESCALES)
    default_step_scale = 0.001

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {"momenta": params.new_zeros(len(params), len(METZ_DECAYS)), "step": params.new_zeros(())}

    def __call__(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[Tensor, State]:
        decays = torch.tensor(METZ_DECAYS, dtype=params.dtype, device=params.device)
        momenta = decays * state["momenta"] + (1 - decays) * grads[:, None]
        stacked = torch.cat([grads[:, None], params[:, None], momenta], dim=1)
        segments, sizes = space.segment_ids, space.segment_sizes.to(params.dtype)
        sums = stacked.new_zeros(len(sizes), stacked.shape[1]).index_add(0, segments, stacked.square())
        normalised = stacked * torch.rsqrt(SECOND_MOMENT_EPS + sums / sizes[:, None])[segments]
        timescales = torch.tensor(METZ_TIMESCALES, dtype=params.dtype, device=params.device)
        time = torch.tanh(state["step"] / timescales - 1).expand(len(params), -1)
        new_state = {"momenta": momenta, "step": state["step"] + 1}
        return torch.cat([normalised, time], dim=1), new_state


FEATURE_SETS: dict[str, type[FeatureSet]] = {"kofinas": KofinasFeatures, "metz": MetzFeatures}


def build_feature_set(name: str) -> FeatureSet:
    if name not in FEATURE_SETS:
        raise ConfigError(f"unknown feature set '{name}'; choose one of: {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[name]()
