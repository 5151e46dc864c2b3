"""Per-parameter learned optimizers: a small network applied to every coordinate's features at once.

The network reads each parameter's features ``(n, F)`` (:mod:`~lightning_l2o.meta_optimizers.features`)
and outputs two numbers ``(a, b)`` per parameter; the update is ``delta = lr * a * exp(exp_scale * b)``
and ``theta <- theta + delta`` (Kofinas et al. 2024: ``lr = exp_scale = 0.01``; Metz et al. 2019:
``0.001``). All parameters of the optimizee go through the same batched computation, in chunks of
``chunk_size`` coordinates (see :class:`PerParameterOptimizer`).

Inductive biases (constructor arguments, so YAML options): ``progress_features`` appends training-progress
features; ``adam_lr`` makes the update a learned correction on top of an Adam step, ``theta <- adam(theta) +
delta``, with the output layer zero-initialised so that the untrained rule is Adam; ``adam_scale`` adds a third
output that rescales Adam's step per tensor (a learned per-layer learning rate and schedule); ``adam_schedule``
rescales it by a learned function of the step alone (a learned learning-rate schedule, e.g. a warmup, with 12
meta-parameters), and with ``schedule_horizon`` also of the training progress ``t / T`` (an anneal to the end of
a run of known length);
``adam_fast_beta2`` adds an output that, per coordinate, moves Adam's denominator geometrically towards (or away
from) a second, faster second moment (a learned beta2); ``output_scale`` shrinks the output layer's initial weights
so that an untrained random draw takes small steps.
"""

from __future__ import annotations

import inspect
import math
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import NUM_STEPS_KEY, Info, MetaOptimizer, State, check_fraction, check_positive
from lightning_l2o.meta_optimizers.baselines import Adam
from lightning_l2o.meta_optimizers.features import (
    ALL,
    HORIZON_POWERS,
    METZ_TIMESCALES,
    ChunkFeatures,
    build_feature_set,
    horizon_features,
    time_features,
)
from lightning_l2o.params import ParamSpace

OUTPUTS = 2  # direction a and log-magnitude b; then s (adam_scale) and r (adam_fast_beta2) where enabled
ADAM_SCALE_RANGE = 10.0  # Adam's step is scaled by ADAM_SCALE_RANGE ** tanh(s): between 0.1x and 10x
ADAM_STATE_PREFIX = "adam_"
FAST_SECOND_MOMENT = "fast_exp_avg_sq"  # the faster second moment of adam_fast_beta2, in the state as adam_fast_...
TINY = 1e-30  # keeps the ratio of the two second moments finite where a gradient has been exactly 0
DEFAULT_CHUNK_SIZE = 16384
NETWORK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PerParameterOptimizer(MetaOptimizer):
    """Base of FF, LSTM and the GNN rules: features -> network -> ``(a, b)`` -> ``theta + lr a exp(exp_scale b)``, in
    chunks.

    A subclass builds its network (``self.network``) after ``super().__init__``, then calls
    :meth:`init_output_layer`, and implements :meth:`network_chunk` (and :meth:`network_context` if part of its
    network works on the whole vector at once, as a GNN does; :meth:`init_network_state` if the network keeps a
    state, per coordinate as the LSTM's or of the whole vector as the PNA-LSTM's). Its ``info``: ``update_rms``, the
    RMS of the whole update, and with ``adam_lr`` ``correction_rms``, that of the learned term.

    Outputs: :attr:`num_outputs` per coordinate, ``(a, b)``, then ``s`` with ``adam_scale`` and ``r`` with
    ``adam_fast_beta2``.

    Chunking: :meth:`forward` computes whole-vector quantities once (the feature state, per-tensor statistics,
    :meth:`network_context`), then runs features -> network -> update on ``chunk_size`` coordinates at a time,
    so the network's temporaries are ``chunk_size x hidden`` (cache-sized) instead of ``n x hidden``. Every
    coordinate's arithmetic is the same as in one call over all ``n``: the features exactly (per-tensor statistics
    are over whole tensors), the network's matmul rows the same dot products, whose summation order the BLAS may
    change with a matmul's number of rows (<= 1 ulp of an output; bit-identical on a 1M-parameter MLP at the
    default size). Meta-training takes the same path: slicing and concatenation pass gradients through exactly,
    and chunking there saves time (cache-resident forward) but not memory, since autograd keeps every chunk's
    activations; optimizees smaller than one chunk (e.g. task 17's 14k parameters) run in a single chunk.

    Args:
        features: ``kofinas``, ``metz`` (normalised per tensor) or ``adam`` (Adam-normalised).
        hidden_dim: width of the network's hidden layers.
        num_layers: number of hidden layers.
        lr: the step scale lambda (default: 0.01 for ``kofinas``, 0.001 for ``metz`` and ``adam``); the deployed
            optimizer's lr.
        exp_scale: scale of ``b`` inside the exponential (default: the same as ``lr``'s default).
        progress_features: append the 11 training-progress features ``tanh(t / s - 1)`` of ``metz`` (which has
            them already) to the features.
        adam_lr: if set, ``theta <- theta - adam_lr * m_hat / (sqrt(v_hat) + 1e-8) + delta``: the step of
            ``torch.optim.Adam`` (betas 0.9, 0.999; moments in the rule's state under ``adam_*``) plus the learned
            term, whose output layer starts at zero, so the untrained rule is Adam at ``adam_lr``. A caller's
            ``lr`` other than :attr:`lr` scales both terms (the Adam step runs at ``adam_lr * lr / self.lr``).
            Meta-gradients see the Adam step as ``theta +`` a constant: its derivative in the gradient (~1 / eps
            where ``g ~ 0``, NaN where ``g`` has been exactly 0, e.g. a dead ReLU's weights) would swamp them.
        adam_scale: with ``adam_lr``, the network has a third output ``s`` and Adam's step of each parameter
            tensor is multiplied by ``10 ** tanh(mean of s over the tensor)`` (0.1x to 10x; 1 at the
            zero-initialised start, so the untrained rule is still Adam): with ``progress_features``, a learned
            per-layer learning rate and schedule. ``info`` gains ``adam_scale``, the mean multiplier over tensors.
        adam_schedule: with ``adam_lr``, Adam's step of step ``t`` (from 1) is also multiplied by ``10 ** tanh(w .
            phi(t) + c)``, where ``phi(t)`` are the 11 training-progress features ``tanh(t / s - 1)`` and ``w (11,)``,
            ``c`` are meta-parameters (:attr:`schedule`, zero-initialised: the untrained rule is still Adam). With
            ``adam_scale`` the two add inside the ``tanh``. A learned learning-rate schedule (warmup, decay) in 12
            meta-parameters, few enough for an evolution-strategies estimator to resolve, which a schedule learned
            through the whole network's ``s`` is not. ``info`` gains ``adam_schedule``, the factor of this step.
        schedule_horizon: with ``adam_schedule``, ``phi(t)`` also holds the powers ``p, p^2, p^3, p^4`` of the
            training progress ``p = t / T`` (clamped to 1), ``T`` the run's number of steps (the task's horizon in
            meta-training and meta-test, ``num_steps`` of the deployed optimizer; :meth:`start_state` puts it in the
            state): a schedule that can anneal towards the end of the run, as tuned hand-made ones do, in 16
            meta-parameters.
        adam_beta2: beta2 of the Adam step (``torch.optim.Adam``'s 0.999 by default).
        adam_fast_beta2: with ``adam_lr``, the rule also keeps a faster second moment ``u`` (this beta2, e.g. 0.99),
            the network has a further output ``r`` per coordinate, and Adam's denominator ``sqrt(v_hat)`` becomes
            ``sqrt(v_hat) * (u_hat / v_hat) ** (tanh(r) / 2)``: at ``tanh(r) = 1`` that of the fast moment, at 0
            (the zero-initialised start: the untrained rule is still Adam) Adam's, in between their geometric mean,
            below 0 further from the fast one. A learned beta2 per coordinate. ``info`` gains ``adam_fast_weight``,
            the mean of ``tanh(r)``.
        shape_features: append 2 features of each coordinate's tensor, ``log10`` of its fan-in and fan-out over 3
            (:class:`~lightning_l2o.meta_optimizers.features.ShapeFeatures`): with ``adam_scale``, a learned step that
            can differ between wide and narrow layers and networks.
        output_scale: factor on the initial weights and bias of the network's output layer (e.g. 0.01: an
            untrained random draw's first updates are ~100x smaller); 1.0 is PyTorch's default init.
        chunk_size: coordinates per chunk (see above).
        network_dtype: ``float32``, or ``bfloat16``: the per-parameter network runs under ``torch.autocast`` in
            bfloat16 (matmuls in bf16, features, update and state in float32). Meant for deployment: faster
            where bf16 matmuls are (CPUs with AVX512-BF16 or AMX, GPUs), the update ~1 % off float32's.
        config: a subclass's further constructor arguments, recorded for checkpoints.
    """

    execution_options = ("chunk_size", "network_dtype")

    network_state_dims: ClassVar[dict[str, int]] = {}
    """The network's per-coordinate state (:meth:`init_network_state`): each key's coordinate dimension."""

    def __init__(
        self, features: str = "kofinas", hidden_dim: int = 64, num_layers: int = 2, lr: float | None = None,
        exp_scale: float | None = None, progress_features: bool = False, adam_lr: float | None = None,
        output_scale: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE, network_dtype: str = "float32",
        adam_scale: bool = False, adam_beta2: float = 0.999, adam_fast_beta2: float | None = None,
        shape_features: bool = False, adam_schedule: bool = False, schedule_horizon: bool = False, **config: Any,
    ) -> None:
        owner = type(self).__name__
        self._check_options(config)
        feature_set = build_feature_set(features, progress_features, shape_features)
        lr = feature_set.default_step_scale if lr is None else lr
        exp_scale = feature_set.default_step_scale if exp_scale is None else exp_scale
        check_positive(owner, hidden_dim=hidden_dim, num_layers=num_layers, lr=lr, exp_scale=exp_scale)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"{owner}: chunk_size must be a positive integer, got {chunk_size!r}; e.g. "
                              f"{DEFAULT_CHUNK_SIZE} (coordinates per chunk of the per-parameter network)")
        if network_dtype not in NETWORK_DTYPES:
            raise ConfigError(f"{owner}: network_dtype must be one of {', '.join(NETWORK_DTYPES)}, got "
                              f"{network_dtype!r}; float32 (the default) or bfloat16 for faster, ~1 % different updates")
        if adam_lr is not None and not adam_lr > 0:
            raise ConfigError(f"{owner}: adam_lr must be > 0, got {adam_lr}; give the Adam step's learning rate "
                              f"(e.g. 0.001), or null for no Adam step")
        if not output_scale > 0:
            raise ConfigError(f"{owner}: output_scale must be > 0, got {output_scale}; e.g. 0.01 for small initial "
                              f"updates, or 1.0 for PyTorch's default init")
        if adam_lr is not None and output_scale != 1.0:
            raise ConfigError(f"{owner}: output_scale={output_scale} has no effect with adam_lr, whose output layer "
                              f"starts at zero (the untrained rule is Adam); remove output_scale or set adam_lr: null")
        if adam_scale and adam_lr is None:
            raise ConfigError(f"{owner}: adam_scale rescales the Adam step, and there is none: set adam_lr (e.g. "
                              f"0.01) or adam_scale: false")
        if adam_schedule and adam_lr is None:
            raise ConfigError(f"{owner}: adam_schedule rescales the Adam step, and there is none: set adam_lr (e.g. "
                              f"0.01) or adam_schedule: false")
        if schedule_horizon and not adam_schedule:
            raise ConfigError(f"{owner}: schedule_horizon adds the training progress to the learned schedule, and there "
                              f"is none: set adam_schedule: true (with adam_lr) or schedule_horizon: false")
        if adam_fast_beta2 is not None and adam_lr is None:
            raise ConfigError(f"{owner}: adam_fast_beta2 reweighs the Adam step's denominator, and there is none: set "
                              f"adam_lr (e.g. 0.01) or adam_fast_beta2: null")
        check_fraction(owner, adam_beta2=adam_beta2, **({} if adam_fast_beta2 is None else
                                                        {"adam_fast_beta2": adam_fast_beta2}))
        super().__init__(features=features, hidden_dim=hidden_dim, num_layers=num_layers, lr=lr, exp_scale=exp_scale,
                         progress_features=progress_features, adam_lr=adam_lr, output_scale=output_scale,
                         chunk_size=chunk_size, network_dtype=network_dtype, adam_scale=adam_scale,
                         adam_beta2=adam_beta2, adam_fast_beta2=adam_fast_beta2, shape_features=shape_features,
                         adam_schedule=adam_schedule, schedule_horizon=schedule_horizon, **config)
        self.features = feature_set
        self.lr, self.exp_scale, self.output_scale = lr, exp_scale, output_scale
        self.chunk_size, self.network_dtype = chunk_size, NETWORK_DTYPES[network_dtype]
        self.adam = None if adam_lr is None else Adam(lr=adam_lr, beta2=adam_beta2)
        self.adam_scale, self.adam_fast_beta2 = adam_scale, adam_fast_beta2
        self.uses_horizon = schedule_horizon
        schedule_inputs = len(METZ_TIMESCALES) + (len(HORIZON_POWERS) if schedule_horizon else 0)
        self.schedule = nn.Linear(schedule_inputs, 1) if adam_schedule else None
        if self.schedule is not None:
            nn.init.zeros_(self.schedule.weight)
            nn.init.zeros_(self.schedule.bias)

    @classmethod
    def option_names(cls) -> set[str]:
        """The constructor arguments this rule accepts: those its own and its base classes' ``__init__`` name (a
        subclass passes the rest on as ``**options``)."""
        return {name for owner in cls.__mro__ if "__init__" in vars(owner)
                for name, parameter in inspect.signature(owner.__init__).parameters.items()
                if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}

    def _check_options(self, config: dict[str, Any]) -> None:
        """A :class:`~lightning_l2o.errors.ConfigError` naming each key of ``config`` (the arguments a subclass passes
        on) that no constructor of this rule accepts, e.g. a misspelt option given to FF in Python."""
        accepted = self.option_names()
        unknown = sorted(set(config) - accepted)
        if unknown:
            raise ConfigError(f"{type(self).__name__}: unknown option(s) {', '.join(unknown)}; the options are "
                              f"{', '.join(sorted(accepted))}")

    @property
    def num_outputs(self) -> int:
        """Outputs of the network per coordinate: ``(a, b)``, then ``s`` with ``adam_scale`` and ``r`` with
        ``adam_fast_beta2``."""
        return OUTPUTS + self.adam_scale + (self.adam_fast_beta2 is not None)

    def with_config(self, **changes: Any) -> PerParameterOptimizer:
        """This rule, with its weights, rebuilt with ``changes`` to its recorded constructor arguments (e.g.
        ``network_dtype="bfloat16"`` or another ``chunk_size`` to deploy a trained rule)."""
        rule = type(self)(**{**self.config, **changes})
        rule.load_state_dict(self.state_dict())
        return rule.to(self.output_layer.weight.device)

    @property
    def output_layer(self) -> nn.Linear:
        """The network's last layer, ``hidden -> num_outputs``: what ``adam_lr`` and ``output_scale`` initialise."""
        return self.network.output_layer

    def init_output_layer(self) -> None:
        """Scale the freshly initialised :attr:`output_layer`: to zero with ``adam_lr``, else by ``output_scale``."""
        scale = 0.0 if self.adam is not None else self.output_scale
        with torch.no_grad():
            self.output_layer.weight.mul_(scale)
            self.output_layer.bias.mul_(scale)

    def init_state(self, params: Tensor, space: ParamSpace) -> State:
        adam_state = {} if self.adam is None else _prefixed(self.adam.init_state(params, space))
        if self.adam_fast_beta2 is not None:
            adam_state[ADAM_STATE_PREFIX + FAST_SECOND_MOMENT] = params.new_zeros(params.shape)
        return {**self.features.init_state(params, space), **self.init_network_state(params, space), **adam_state}

    def init_network_state(self, params: Tensor, space: ParamSpace) -> State:
        """The network's own state: per coordinate (:attr:`network_state_dims`) and of its whole-vector part
        (:meth:`network_context`'s; e.g. a recurrent GNN's per node); none for a feed-forward network."""
        return {}

    def network_context(self, features: ChunkFeatures, space: ParamSpace, state: State) -> tuple[Any, State]:
        """Whole-vector work that every chunk's :meth:`network_chunk` reads (PNA: its GNN over the whole graph,
        from ``features(ALL)``, ``(n, F)``), and the new state of that work, read from the rule's ``state`` (a
        recurrent GNN's per-node memory); none by default."""
        return None, {}

    @abstractmethod
    def network_chunk(self, features: Tensor, state: State, rows: slice, context: Any) -> tuple[Tensor, State]:
        """The coordinates ``rows``: ``features (c, F)`` and their network state -> outputs ``(c, num_outputs)`` and
        their new network state."""

    def network_step(self, features: Tensor, state: State, space: ParamSpace) -> tuple[Tensor, State]:
        """The network on every coordinate in one chunk: ``features (n, F)`` -> outputs ``(n, num_outputs)`` and its new
        state."""
        context, context_state = self.network_context(lambda rows: features[rows], space, state)
        outputs, network_state = self._run_network(features, self._network_state(state, ALL), ALL, context)
        return outputs, {**network_state, **context_state}

    def forward(self, params: Tensor, grads: Tensor, loss: Tensor, state: State, space: ParamSpace,
                lr: float | Tensor):
        features, feature_state = self.features.prepare(params, grads, state, space)
        context, context_state = self.network_context(features, space, state)
        deltas, adam_outputs, network_states = [], [], []
        for rows in self._chunks(len(params)):
            outputs, network_state = self._run_network(features(rows), self._network_state(state, rows), rows, context)
            deltas.append(lr * outputs[:, 0] * torch.exp(self.exp_scale * outputs[:, 1]))
            adam_outputs.append(outputs[:, OUTPUTS:])
            network_states.append(network_state)
        delta = torch.cat(deltas)
        network_state = {key: torch.cat([chunk[key] for chunk in network_states], dim)
                         for key, dim in self.network_state_dims.items()} | context_state
        if self.adam is None:
            info: Info = {"update_rms": _rms(delta)}
            return delta.add_(params), {**feature_state, **network_state}, info  # params + delta in delta's memory
        adam_state = {key[len(ADAM_STATE_PREFIX):]: value for key, value in state.items()
                      if key.startswith(ADAM_STATE_PREFIX)}
        adam_lr = self.adam.lr * (lr / self.lr)
        adam_outputs = torch.cat(adam_outputs)
        m_hat, v_hat, adam_state = self.adam.moments(grads.detach(), adam_state)
        denominator, adam_info = v_hat.sqrt(), {}
        if self.adam_fast_beta2 is not None:
            beta2 = self.adam_fast_beta2
            fast = beta2 * state[ADAM_STATE_PREFIX + FAST_SECOND_MOMENT] + (1 - beta2) * grads.detach().square()
            adam_state[FAST_SECOND_MOMENT] = fast
            fast_weight = torch.tanh(adam_outputs[:, -1])
            ratio = (fast / (1 - beta2 ** adam_state["step"]) + TINY) / (v_hat + TINY)
            denominator = denominator * ratio ** (fast_weight / 2)  # exactly sqrt(v_hat) at weight 0
            adam_info["adam_fast_weight"] = fast_weight.detach().mean()
        stepped = self.adam.apply_step(params.detach(), m_hat, denominator, adam_lr)
        num_steps = self._num_steps(state) if self.uses_horizon else None
        if self.adam_scale or self.schedule is not None:
            multiplier = self._adam_multiplier(adam_outputs[:, 0] if self.adam_scale else None, adam_state["step"],
                                               num_steps, space, adam_info)
            stepped = stepped + (multiplier[space.segment_ids] - 1) * (stepped - params.detach())  # exact at 1
        stepped = stepped + (params - params.detach())  # the same values, and d stepped / d params = 1
        info = {"update_rms": _rms(stepped - params + delta), "correction_rms": _rms(delta), **adam_info}
        horizon = {NUM_STEPS_KEY: num_steps} if self.uses_horizon else {}
        return stepped + delta, {**feature_state, **network_state, **_prefixed(adam_state), **horizon}, info

    def _num_steps(self, state: State) -> Tensor:
        """The run's number of steps from ``state``, where :meth:`start_state` put it."""
        if NUM_STEPS_KEY not in state:
            raise ConfigError(f"{type(self).__name__} reads the training progress t / T, and its state has no "
                              f"'{NUM_STEPS_KEY}': start the state with start_state(params, space, num_steps), not "
                              f"init_state")
        return state[NUM_STEPS_KEY]

    def _adam_multiplier(self, scale_outputs: Tensor | None, step: Tensor, num_steps: Tensor | None, space: ParamSpace,
                         info: Info) -> Tensor:
        """Each tensor's factor on Adam's step, ``(num_tensors,)``: ``10 ** tanh(x)``, where ``x`` adds the mean of
        ``scale_outputs`` ``s (n,)`` over the tensor (``adam_scale``) and the schedule's ``w . phi(step) + c``
        (``adam_schedule``; ``phi`` with the progress ``step / num_steps`` under ``schedule_horizon``). Records
        ``adam_scale`` (mean factor) and ``adam_schedule`` (the schedule's own) in ``info``."""
        log_scale = space.segment_mean(scale_outputs) if scale_outputs is not None else step.new_zeros(
            len(space.segment_sizes))
        if self.schedule is not None:
            time = time_features(step.to(log_scale.dtype))
            if self.uses_horizon:
                time = torch.cat([time, horizon_features(step.to(log_scale.dtype), num_steps.to(log_scale.dtype))])
            scheduled = self.schedule(time)
            log_scale = log_scale + scheduled
            info["adam_schedule"] = ADAM_SCALE_RANGE ** torch.tanh(scheduled.detach()[0])
        multiplier = ADAM_SCALE_RANGE ** torch.tanh(log_scale)
        info["adam_scale"] = multiplier.detach().mean()
        return multiplier

    def _chunks(self, n: int) -> Iterator[slice]:
        return (slice(start, start + self.chunk_size) for start in range(0, n, self.chunk_size))

    def _network_state(self, state: State, rows: slice) -> State:
        """The network state of the coordinates ``rows``: views, sliced along each key's coordinate dimension."""
        return {key: state[key][(slice(None),) * dim + (rows,)] for key, dim in self.network_state_dims.items()}

    def _run_network(self, features: Tensor, state: State, rows: slice, context: Any) -> tuple[Tensor, State]:
        """:meth:`network_chunk` in :attr:`network_dtype`; outputs and state come back in the features' dtype."""
        with torch.autocast(features.device.type, torch.bfloat16, enabled=self.network_dtype == torch.bfloat16):
            outputs, new_state = self.network_chunk(features, state, rows, context)
        return outputs.to(features.dtype), {key: value.to(features.dtype) for key, value in new_state.items()}


def _prefixed(adam_state: State) -> State:
    return {ADAM_STATE_PREFIX + key: value for key, value in adam_state.items()}


def _rms(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x.detach()) / math.sqrt(x.numel())  # one pass, no (n,) temporary
