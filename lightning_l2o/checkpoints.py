"""The checkpoint format of ``fit`` and the one place that reads it.

A checkpoint is read weights-only (tensors and plain values, no pickled objects), from a local file only, and
the meta-optimizer it names is built only if its class is a registered update rule
(:data:`~lightning_l2o.meta_optimizers.base.UPDATE_RULES`): nothing a file names is imported or called.
Every reader (deployment, the report, the command line) goes through :func:`read_checkpoint`; wherever a
checkpoint names a learned optimizer, ``pretrained:<name>`` names one shipped with the package instead
(:mod:`lightning_l2o.pretrained`, read the same way).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import UPDATE_RULES, MetaOptimizer, class_path

CHECKPOINT_KEY = "lightning_l2o"
LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
WEIGHTS_PREFIX = "meta_optimizer."
FIX = "pass a .ckpt written by `python -m lightning_l2o fit`"
PRETRAINED_PREFIX = "pretrained:"


def load_weights_only(
    path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint", fix: str = FIX
) -> Any:
    """``torch.load(path, weights_only=True)`` of a local file; a :class:`ConfigError` naming the file, the problem
    and ``fix`` for URLs, missing files and files it cannot read (truncated, garbage, pickled objects)."""
    if "://" in str(path):
        raise ConfigError(f"{what} {path} is a URL; only local files are read: download it and pass its path")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}; {fix}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 (truncated or garbage files fail in many ways inside torch.load)
        raise ConfigError(f"{path} is not a readable {what} ({_one_line(err)}); {fix}") from None


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The contents of a ``fit`` checkpoint; a :class:`ConfigError` naming the file and the problem otherwise.

    Refused: what :func:`load_weights_only` refuses, and files without this project's entry.
    """
    checkpoint = load_weights_only(path, map_location)
    entry = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not (isinstance(entry, dict) and is_rule_config(entry.get("meta_optimizer"))
            and isinstance(checkpoint.get("state_dict"), dict) and LIGHTNING_VERSION_KEY in checkpoint):
        raise ConfigError(f"{path} was not written by lightning_l2o (no valid '{CHECKPOINT_KEY}' entry); {FIX}")
    return checkpoint


def is_rule_config(saved: Any) -> bool:
    """Whether ``saved`` has the form of a recorded meta-optimizer: ``{"class_path": str, "init_args": dict}``."""
    return (isinstance(saved, dict) and isinstance(saved.get("class_path"), str)
            and isinstance(saved.get("init_args"), dict))


def meta_optimizer_config(rule: MetaOptimizer) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` that rebuild ``rule`` (the form LightningCLI configs use)."""
    return {"class_path": class_path(type(rule)), "init_args": dict(rule.config)}


def build_meta_optimizer(saved: dict[str, Any], source: str | Path = "the checkpoint") -> MetaOptimizer:
    """Instantiate a registered update rule from its recorded ``{"class_path", "init_args"}``."""
    cls = UPDATE_RULES.get(saved["class_path"])
    if cls is None:
        raise ConfigError(f"{source} names {saved['class_path']!r}, which is not an update rule of lightning_l2o "
                          f"(registered: {sorted(UPDATE_RULES)}); a checkpoint builds only MetaOptimizer subclasses: "
                          f"import the module that defines yours before loading")
    try:
        return cls(**saved["init_args"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {cls.__name__} cannot be built from the recorded settings ({err})") from None


def check_compatible(saved: dict[str, Any], rule: MetaOptimizer) -> None:
    """Raise a :class:`ConfigError` if ``rule`` is not the class and configuration a checkpoint was trained with."""
    expected = class_path(type(rule))
    if saved["class_path"] != expected:
        raise ConfigError(f"the checkpoint holds a {saved['class_path']} but the config builds a {expected}; "
                          f"use the config the checkpoint was trained with")
    differing = {k: (v, rule.config.get(k)) for k, v in saved["init_args"].items()
                 if rule.config.get(k) != v and k not in rule.execution_options}
    if differing:
        detail = ", ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, (a, b) in differing.items())
        raise ConfigError(f"the checkpoint's meta-optimizer was configured differently ({detail}); "
                          f"set model.meta_optimizer.init_args to the checkpoint's values")


def restore_meta_optimizer(saved: dict[str, Any], weights: dict[str, Any], source: str | Path) -> MetaOptimizer:
    """The registered update rule ``saved`` records (see :func:`build_meta_optimizer`) holding ``weights``."""
    rule = build_meta_optimizer(saved, source)
    try:
        rule.load_state_dict(weights)
    except RuntimeError as err:
        raise ConfigError(f"{source}: the stored weights do not fit {type(rule).__name__}: "
                          f"{_one_line(err)}") from None
    return rule


def load_meta_optimizer(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> MetaOptimizer:
    """The trained meta-optimizer stored in a ``fit`` checkpoint, or the shipped one ``pretrained:<name>`` names."""
    if str(ckpt_path).startswith(PRETRAINED_PREFIX):
        from lightning_l2o.pretrained import pretrained_rule  # that module builds on this one

        return pretrained_rule(str(ckpt_path)[len(PRETRAINED_PREFIX):], map_location)
    checkpoint = read_checkpoint(ckpt_path, map_location)
    weights = {k[len(WEIGHTS_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(WEIGHTS_PREFIX)}
    return restore_meta_optimizer(checkpoint[CHECKPOINT_KEY]["meta_optimizer"], weights, ckpt_path)


class FinalCheckpoint(pl.Callback):
    """Leaves ``last.ckpt`` at fit's final step, and at the last completed outer step when fit is stopped by
    SIGTERM or Ctrl-C: the first Ctrl-C finishes the current outer step, saves and stops; a second one stops at
    once. Writes the ``last.ckpt`` of each ``ModelCheckpoint(save_last=True)`` of the trainer, at the same point of
    the step as their own periodic saves, so a resume from it is exact. :class:`~lightning_l2o.L2OModule` adds it
    to every trainer.
    """

    def __init__(self) -> None:
        self._interrupted = False
        self._saved_step = -1
        self._previous_sigint: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._interrupted, self._saved_step = False, -1
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True
        rank_zero_info("\nCtrl-C: finishing this outer step, then saving last.ckpt and stopping (again: stop now)")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        stopping = self._interrupted or trainer.received_sigterm
        if trainer.world_size > 1:  # every rank must save (a collective) and stop at the same step
            flag = torch.tensor([float(stopping)], device=pl_module.device)
            torch.distributed.all_reduce(flag)
            stopping = flag.item() > 0
        if stopping or 0 < trainer.max_steps <= trainer.global_step:
            self._save_last(trainer)
        if stopping and not trainer.received_sigterm:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_last(trainer)  # runs ended by max_epochs
        self._restore_sigint()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()

    def _save_last(self, trainer: pl.Trainer) -> None:
        if trainer.global_step == self._saved_step:
            return
        for callback in trainer.checkpoint_callbacks:
            if callback.save_last and callback.dirpath:
                path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
                trainer.save_checkpoint(path)
                callback.last_model_path = str(path)  # its own later saves of last.ckpt overwrite this file
        self._saved_step = trainer.global_step

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None


def _one_line(err: BaseException, limit: int = 160) -> str:
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
