"""Deploy a (trained) meta-optimizer as a ``torch.optim.Optimizer``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers import MetaOptimizer, Opt2Vec
from lightning_l2o.params import ParamLayout, ParamSpace

Params = Iterable[Tensor] | Iterable[dict[str, Any]]
STATE_KEY = "rule_state"


class LearnedOptimizer(Optimizer):
    """Runs ``update_rule.forward`` under ``torch.no_grad()`` on each parameter group's flattened parameters.

    ``params`` is an ``nn.Module`` (its parameters form one group and the rule sees its structure: names,
    shapes and, for rules that read it, its neural graph), or parameters / parameter groups as for any
    ``torch.optim`` optimizer (the rule then sees only shapes; a rule that needs the graph refuses them).
    Each group's ``lr`` is the rule's base learning rate for that group (schedulers change it as usual);
    the rule's state (e.g. momentum buffer and history) lives in ``self.state`` and round-trips through
    ``state_dict`` / ``load_state_dict``.

    ``step`` accepts either a closure (the ``torch.optim`` contract, used by Lightning's automatic
    optimization; it returns the closure's loss) or the current loss as a number (as in Opt2Vec's
    ``embedding = optimizer.step(loss.item())``; it then returns the rule's embedding, or ``None``).
    The last step's info (effective lr, momentum, ...) is kept in :attr:`last_info`.
    """

    def __init__(self, params: Params | nn.Module, update_rule: MetaOptimizer, lr: float | None = None) -> None:
        lr = update_rule.lr if lr is None else lr
        if not lr > 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        self.module = params if isinstance(params, nn.Module) else None
        super().__init__(list(params.parameters()) if self.module is not None else params, {"lr": lr})
        self.update_rule = update_rule.eval().requires_grad_(False)
        self.last_info: dict[str, Tensor] = {}
        self._spaces: dict[int, ParamSpace] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | float | Tensor | None = None) -> Any:  # type: ignore[override]
        loss = None
        if callable(closure):
            with torch.enable_grad():
                loss = closure()
        elif closure is not None:
            loss = closure
        if loss is None and self.update_rule.uses_loss:
            raise ConfigError(f"{type(self.update_rule).__name__} needs the loss: call step(loss.item()) or step(closure)")
        loss_value = torch.tensor(math.nan if loss is None else float(loss))
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            if params:
                self.last_info = self._update_group(index, params, loss_value, group["lr"])
        return loss if callable(closure) else self.last_info.get("embedding")

    def space(self, index: int) -> ParamSpace:
        """The static description of param group ``index`` (the module's structure for a module's group)."""
        if index not in self._spaces:
            params = self.param_groups[index]["params"]
            device = params[0].device
            if self.module is not None and index == 0:
                self._spaces[index] = ParamSpace.of_module(self.module, device)
            else:
                self._spaces[index] = ParamSpace.of_layout(
                    ParamLayout.from_tensors((str(i), p) for i, p in enumerate(params)), device)
        return self._spaces[index]

    def _update_group(self, index: int, params: list[Tensor], loss: Tensor, lr: float) -> dict[str, Tensor]:
        flat = ParamLayout.flatten(params)
        grads = ParamLayout.flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
        state = self.state[params[0]]
        space = self.space(index)
        if STATE_KEY not in state:
            self.update_rule.to(flat.device)
            state[STATE_KEY] = self.update_rule.init_state(flat, space)
        new_flat, state[STATE_KEY], info = self.update_rule(flat, grads, loss.to(flat), state[STATE_KEY], space, lr)
        torch._foreach_copy_(params, [c.view_as(p) for c, p in zip(new_flat.split([p.numel() for p in params]), params)])
        return info


class Opt2VecOptimizer(LearnedOptimizer):
    """Opt2Vec as an optimizer: ``Opt2VecOptimizer(model.parameters(), base_lr=0.01, embedding_dim=16, history_length=5)``.

    A fresh instance holds an untrained Opt2Vec (SGD with momentum until trained); load a meta-trained
    one with :func:`load_learned_optimizer`.
    """

    def __init__(
        self, params: Params, base_lr: float = 0.01, embedding_dim: int = 16, history_length: int = 5, **kwargs: Any
    ) -> None:
        rule = Opt2Vec(base_lr=base_lr, embedding_dim=embedding_dim, history_length=history_length, **kwargs)
        super().__init__(params, rule)


def load_meta_optimizer(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> MetaOptimizer:
    """The trained meta-optimizer stored in a ``fit`` checkpoint."""
    from lightning_l2o.module import CHECKPOINT_KEY, build_meta_optimizer

    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}; pass the path of a .ckpt written by `lightning_l2o fit`")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if CHECKPOINT_KEY not in checkpoint:
        raise ConfigError(f"{path} was not written by lightning_l2o (no '{CHECKPOINT_KEY}' entry); "
                          f"pass a checkpoint saved by `python -m lightning_l2o fit`")
    rule = build_meta_optimizer(checkpoint[CHECKPOINT_KEY]["meta_optimizer"])
    prefix = "meta_optimizer."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    try:
        rule.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(f"{path}: the stored weights do not fit {type(rule).__name__}: {err}") from None
    return rule


def load_learned_optimizer(
    ckpt_path: str | Path, params: Params | nn.Module, lr: float | None = None,
    map_location: str | torch.device = "cpu",
) -> LearnedOptimizer:
    """A ``torch.optim.Optimizer`` driven by the meta-optimizer trained in ``ckpt_path`` (``lr``: its base lr).

    ``params``: the model itself (needed by rules that read its structure, e.g. PNA; nested ``nn.Sequential``
    and a ``LightningModule`` passing ``self`` work) or its parameters.
    """
    return LearnedOptimizer(params, load_meta_optimizer(ckpt_path, map_location), lr=lr)
