"""Shared base of the callbacks that read the meta-test trajectories of a validation or test run."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from lightning_l2o.checkpoints import read_checkpoint
from lightning_l2o.evaluation import Trajectory


class MetaTestCallback(pl.Callback):
    """Calls :meth:`on_meta_test_end` once per validation or test run (not the sanity check), on rank 0."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._dispatch(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._dispatch(trainer, pl_module, "test")

    def _dispatch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        trajectories = getattr(pl_module, "meta_test_trajectories", [])
        if trainer.is_global_zero and trajectories:
            self.on_meta_test_end(trainer, pl_module, stage, trajectories)

    def on_meta_test_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, trajectories: list[Trajectory]
    ) -> None:
        raise NotImplementedError


def tensorboard(trainer: pl.Trainer) -> SummaryWriter | None:
    """The trainer's TensorBoard writer, if it logs to TensorBoard."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def run_dir(trainer: pl.Trainer) -> Path:
    """The run's folder: the logger's version folder, else ``default_root_dir``.

    Read from the logger itself: ``Trainer.log_dir`` broadcasts from rank 0 under DDP, and would wait forever
    when called, as here, on rank 0 alone.
    """
    logger = trainer.logger
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return Path(logger.log_dir)
    return Path(logger.save_dir if logger is not None and logger.save_dir else trainer.default_root_dir)


def meta_test_stem(trainer: pl.Trainer, stage: str) -> tuple[Path, int]:
    """``(<run>/meta_test/<stage>_step<N>, N)``: where a meta-test run's files go, and the outer step they show.

    During ``fit``: the current run at the current step. ``validate`` / ``test`` of a checkpoint: beside the run
    that wrote it (``<run>/checkpoints/x.ckpt``), named by the step it was saved at.
    """
    ckpt_path = None if trainer.state.fn == "fit" else trainer.ckpt_path
    if ckpt_path and Path(ckpt_path).is_file():
        folder = Path(ckpt_path).parent
        run = folder.parent if folder.name == "checkpoints" else folder
        step = int(read_checkpoint(ckpt_path)["global_step"])
    else:
        run, step = run_dir(trainer), trainer.global_step
    return run / "meta_test" / f"{stage}_step{step}", step


def learned_trajectories(pl_module: pl.LightningModule, trajectories: list[Trajectory]) -> list[Trajectory]:
    name = pl_module.meta_optimizer.name
    return [t for t in trajectories if t.method == name]
