"""Per-parameter input features of the FF, LSTM and PNA meta-optimizers, computed for all parameters at once.

A feature set maps flat ``params`` and ``grads`` ``(n,)`` and its own state to features ``(n, F)``:

- ``kofinas`` (Kofinas et al., 2024): the parameter, the gradient and 5 momenta ``m <- beta m + g``
  (beta 0.5, 0.9, 0.99, 0.999, 0.9999), each through the log/sign preprocessing of Andrychowicz
  et al. (2016) with ``p = 10``: 14 features.
- ``metz`` (Metz et al., 2019; ``mlp_lopt`` in google/learned_optimization): the gradient, the parameter
  and 5 EMA momenta ``m <- d m + (1 - d) g`` (d 0.1, 0.5, 0.9, 0.99, 0.999), each divided by its
  root-mean-square over its own tensor, plus 11 features ``tanh(t / s - 1)`` of the step ``t`` for time
  scales ``s`` from 1 to 100000: 18 features.
- ``adam``: the gradient and 4 EMA momenta ``m <- beta m + (1 - beta) g`` (beta 0.5, 0.9, 0.99, 0.999), each
  bias-corrected and divided by ``sqrt(v_hat + eps^2)`` (``v``: the EMA of ``g^2`` at beta2 0.999, bias-corrected;
  eps 1e-8: Adam's ``sqrt(v_hat) + eps``, but differentiable where ``v = 0``), and the parameter divided by its
  root-mean-square over its own tensor: 6 features, invariant to the gradient's scale.

Per-tensor normalisation (:func:`per_tensor_scale`) is ``metz``'s, for every quantity; ``adam`` uses it for
the parameter and normalises the gradient statistics per coordinate. :func:`build_feature_set` with
``progress=True`` appends the 11 time features of ``metz`` to any other set (:class:`ProgressFeatures`), and
``shape=True`` the 2 shape features of each coordinate's tensor, ``log10(fan-in) / 3`` and ``log10(fan-out) / 3``
(:class:`ShapeFeatures`): what a rule needs to step differently in wide and narrow layers (muP's Adam lr goes as
1 / fan-in).

A feature set works in two phases so that its caller can build the features chunk by chunk
(:class:`~lightning_l2o.meta_optimizers.per_parameter.PerParameterOptimizer`): :meth:`FeatureSet.prepare` does
the whole-vector work (the new state, and per-tensor statistics over whole tensors) and returns a function of a
slice of coordinates that builds those coordinates' features; every feature is per coordinate given those
statistics, so the chunks' features are exactly the rows of the whole ``(n, F)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import State
from lightning_l2o.params import ParamSpace

KOFINAS_BETAS = (0.5, 0.9, 0.99, 0.999, 0.9999)
METZ_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999)
METZ_TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
ADAM_FEATURE_BETAS = (0.5, 0.9, 0.99, 0.999)
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8
LOG_SIGN_P = 10.0
SECOND_MOMENT_EPS = 1e-5
SHAPE_LOG_SCALE = 3.0  # log10 of a fan of 1000: such a tensor's shape feature is 1
ALL = slice(None)

ChunkFeatures = Callable[[slice], Tensor]
"""``rows`` (a slice of the flat vector; :data:`ALL`: every coordinate) -> those coordinates' features ``(c, F)``."""


def log_sign(x: Tensor, p: float = LOG_SIGN_P) -> Tensor:
    """Andrychowicz et al.'s preprocessing, ``(...,) -> (..., 2)``.

    ``(log|x| / p, sign x)`` where ``|x| >= exp(-p)``, else ``(-1, exp(p) x)``: computed as
    ``(log max(|x|, exp(-p)) / p, clamp(exp(p) x, -1, 1))``, the same values and gradients in fewer passes. The
    pairs are interleaved by ``torch.complex``, several times faster on the CPU than ``stack`` along the last
    dimension, whose generic path dominated the features of a deployed step.
    """
    log_part = x.abs().clamp_min(math.exp(-p)).log().div(p)
    sign_part = x.mul(math.exp(p)).clamp(-1.0, 1.0)
    return torch.view_as_real(torch.complex(log_part, sign_part))


def per_tensor_scale(x: Tensor, space: ParamSpace) -> Tensor:
    """``1 / RMS`` of each column of ``x`` ``(n, k)`` over each whole parameter tensor: ``(num_tensors, k)``.

    ``x[rows] * scale[space.segment_ids[rows]]`` normalises the coordinates ``rows`` (``(c, k)``).
    """
    return torch.rsqrt(SECOND_MOMENT_EPS + space.segment_mean(x.square()))


HORIZON_POWERS = (1, 2, 3, 4)


def time_features(step: Tensor) -> Tensor:
    """``tanh(step / s - 1)`` for the time scales ``s`` of ``METZ_TIMESCALES``: ``(11,)``, the same for every
    coordinate (see :func:`append_time`)."""
    timescales = torch.tensor(METZ_TIMESCALES, dtype=step.dtype, device=step.device)
    return torch.tanh(step / timescales - 1)


def horizon_features(step: Tensor, num_steps: Tensor) -> Tensor:
    """Powers of the training progress ``p = step / num_steps`` (clamped to [0, 1]), ``p ** k`` for ``k`` in
    :data:`HORIZON_POWERS`: ``(4,)``, for a schedule that can anneal towards the end of a run of known length."""
    progress = (step / num_steps).clamp(0.0, 1.0)
    return progress ** torch.tensor(HORIZON_POWERS, dtype=step.dtype, device=step.device)


def append_time(features: Tensor, time: Tensor) -> Tensor:
    """``features (c, F)`` followed by the time features ``time (T,)`` on every row: ``(c, F + T)``."""
    return torch.cat([features, time.expand(len(features), -1)], dim=1)


class FeatureSet(ABC):
    """Turns ``(params, grads, state)`` into per-parameter features ``(n, num_features)`` and a new state."""

    num_features: int
    default_step_scale: float

    @abstractmethod
    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        """State for flat ``params`` ``(n,)``: momenta and whatever else the features need."""

    @abstractmethod
    def prepare(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[ChunkFeatures, State]:
        """``params``, ``grads``: ``(n,)`` -> the features of any slice of coordinates, ``(c, num_features)``, and
        the updated feature state (whole-vector work, e.g. per-tensor statistics, is done here, once)."""

    def __call__(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[Tensor, State]:
        """``params``, ``grads``: ``(n,)`` -> features ``(n, num_features)`` and the updated feature state."""
        features, new_state = self.prepare(params, grads, state, space)
        return features(ALL), new_state


class KofinasFeatures(FeatureSet):
    """Parameter, gradient and 5 accumulated momenta, each log/sign preprocessed: 14 features."""

    num_features = 2 * (2 + len(KOFINAS_BETAS))
    default_step_scale = 0.01

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {"momenta": params.new_zeros(len(params), len(KOFINAS_BETAS))}

    def prepare(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[ChunkFeatures, State]:
        betas = torch.tensor(KOFINAS_BETAS, dtype=params.dtype, device=params.device)
        momenta = (betas * state["momenta"]).add_(grads[:, None])  # in place: one (n, 5) temporary fewer

        def features(rows: slice) -> Tensor:
            quantities = torch.cat([params[rows, None], grads[rows, None], momenta[rows]], dim=1)
            return log_sign(quantities).flatten(1)

        return features, {"momenta": momenta}


class MetzFeatures(FeatureSet):
    """Gradient, parameter and 5 EMA momenta normalised per tensor, plus 11 tanh time features: 18 features."""

    num_features = 2 + len(METZ_DECAYS) + len(METZ_TIMESCALES)
    default_step_scale = 0.001

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {"momenta": params.new_zeros(len(params), len(METZ_DECAYS)), "step": params.new_zeros(())}

    def prepare(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[ChunkFeatures, State]:
        decays = torch.tensor(METZ_DECAYS, dtype=params.dtype, device=params.device)
        momenta = decays * state["momenta"] + (1 - decays) * grads[:, None]
        stacked = torch.cat([grads[:, None], params[:, None], momenta], dim=1)
        scale, time = per_tensor_scale(stacked, space), time_features(state["step"])

        def features(rows: slice) -> Tensor:
            return append_time(stacked[rows] * scale[space.segment_ids[rows]], time)

        return features, {"momenta": momenta, "step": state["step"] + 1}


class AdamFeatures(FeatureSet):
    """Gradient and 4 bias-corrected EMA momenta over ``sqrt(v_hat + eps^2)``, and the parameter normalised per
    tensor: 6 features."""

    num_features = 2 + len(ADAM_FEATURE_BETAS)
    default_step_scale = 0.001

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {"momenta": params.new_zeros(len(params), len(ADAM_FEATURE_BETAS)),
                "second_moment": params.new_zeros(len(params)), "step": params.new_zeros(())}

    def prepare(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[ChunkFeatures, State]:
        betas = torch.tensor(ADAM_FEATURE_BETAS, dtype=params.dtype, device=params.device)
        step = state["step"] + 1
        momenta = betas * state["momenta"] + (1 - betas) * grads[:, None]
        second_moment = ADAM_BETA2 * state["second_moment"] + (1 - ADAM_BETA2) * grads.square()
        momentum_correction, second_moment_correction = 1 - betas**step, 1 - ADAM_BETA2**step
        param_scale = per_tensor_scale(params[:, None], space)

        def features(rows: slice) -> Tensor:
            denominator = (second_moment[rows] / second_moment_correction + ADAM_EPS**2).sqrt()
            gradients = torch.cat([grads[rows, None], momenta[rows] / momentum_correction], dim=1)
            normalised_params = params[rows, None] * param_scale[space.segment_ids[rows]]
            return torch.cat([gradients / denominator[:, None], normalised_params], dim=1)

        return features, {"momenta": momenta, "second_moment": second_moment, "step": step}


class AppendedFeatures(FeatureSet):
    """Another feature set's (``inner``) features followed by :attr:`num_appended` more per coordinate, with the
    inner set's state and step scale."""

    num_appended: int

    def __init__(self, inner: FeatureSet) -> None:
        self.inner = inner
        self.num_features = inner.num_features + self.num_appended
        self.default_step_scale = inner.default_step_scale

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return self.inner.init_state(params, space)


class ProgressFeatures(AppendedFeatures):
    """Another feature set's features followed by the 11 training-progress features ``tanh(t / s - 1)`` of
    ``metz`` (``t``: steps taken so far, kept in the state as ``progress_step``)."""

    num_appended = len(METZ_TIMESCALES)

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        return {**super().init_state(params, space), "progress_step": params.new_zeros(())}

    def prepare(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[ChunkFeatures, State]:
        inner, inner_state = self.inner.prepare(params, grads, state, space)
        time = time_features(state["progress_step"])

        def features(rows: slice) -> Tensor:
            return append_time(inner(rows), time)

        return features, {**inner_state, "progress_step": state["progress_step"] + 1}


class ShapeFeatures(AppendedFeatures):
    """Another feature set's features followed by 2 features of each coordinate's tensor: ``log10(fan_in) / 3`` and
    ``log10(fan_out) / 3`` (:attr:`ParamSpace.fans`), the same for every coordinate of a tensor."""

    num_appended = 2

    def prepare(self, params: Tensor, grads: Tensor, state: State, space: ParamSpace) -> tuple[ChunkFeatures, State]:
        inner, inner_state = self.inner.prepare(params, grads, state, space)
        shape = space.fans.to(params.dtype).log10() / SHAPE_LOG_SCALE

        def features(rows: slice) -> Tensor:
            return torch.cat([inner(rows), shape[space.segment_ids[rows]]], dim=1)

        return features, inner_state


FEATURE_SETS: dict[str, type[FeatureSet]] = {"kofinas": KofinasFeatures, "metz": MetzFeatures, "adam": AdamFeatures}
HAS_TIME_FEATURES = ("metz",)


def build_feature_set(name: str, progress: bool = False, shape: bool = False) -> FeatureSet:
    """The feature set called ``name``, followed by the tensor-shape features if ``shape`` and by the
    training-progress features if ``progress``."""
    if name not in FEATURE_SETS:
        raise ConfigError(f"unknown feature set '{name}'; choose one of: {', '.join(FEATURE_SETS)}")
    if progress and name in HAS_TIME_FEATURES:
        raise ConfigError(f"features: {name} already ends with the training-progress features; "
                          f"set progress_features: false (or pick another feature set)")
    feature_set = FEATURE_SETS[name]()
    feature_set = ShapeFeatures(feature_set) if shape else feature_set
    return ProgressFeatures(feature_set) if progress else feature_set
