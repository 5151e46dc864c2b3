"""Command line: ``python -m lightning_l2o {fit,validate,test} --config configs/<method>.yaml``."""

from __future__ import annotations

import warnings

from pytorch_lightning.cli import LightningCLI

from datamodules import TaskDataModule
from lightning_l2o.errors import config_errors_exit
from lightning_l2o.module import L2OModule


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI; a :class:`ConfigError` is printed as one line and exits with status 2."""
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset` has `__len__` defined.*")
    # Checkpoints hold the state after each outer step, which is what resuming needs.
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    with config_errors_exit():
        return LightningCLI(
            L2OModule,
            TaskDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
