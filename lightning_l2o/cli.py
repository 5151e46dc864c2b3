"""Command line: ``python -m lightning_l2o {fit,validate,test} --config configs/<method>.yaml``."""

from __future__ import annotations

import sys
import warnings

from pytorch_lightning.cli import LightningCLI

from datamodules import TaskDataModule
from lightning_l2o.errors import ConfigError
from lightning_l2o.module import L2OModule


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI; a :class:`ConfigError` is printed as one line and exits with status 2."""
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    try:
        return LightningCLI(
            L2OModule,
            TaskDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
