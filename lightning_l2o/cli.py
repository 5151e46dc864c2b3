"""Command line: ``python -m lightning_l2o {fit,validate,test} --config configs/<method>.yaml``."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from jsonargparse import Namespace
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from datamodules import TaskDataModule
from lightning_l2o.allocator import keep_freed_memory
from lightning_l2o.checkpoints import read_checkpoint
from lightning_l2o.errors import PARSER_OPTIONS, config_errors_exit
from lightning_l2o.module import L2OModule

LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # resolved by Lightning to its own files


class L2OCLI(LightningCLI):
    """``LightningCLI`` where the config given is the one source of truth for a resumed or tested run.

    Stock ``LightningCLI`` merges the hyperparameters stored in ``--ckpt_path`` into the config (which builds
    whatever class the file names and lets it silently override the config). Here the checkpoint is only
    checked to be a readable ``fit`` checkpoint (and Lightning reads it weights-only unless
    ``--weights_only=false`` is given); the module then refuses it if its meta-optimizer differs from the
    config's, while the run's own settings (tasks, baselines, lr grid, trainer) come from the config.
    """

    def before_instantiate_classes(self) -> None:
        """A logger's relative ``save_dir`` lies under ``trainer.default_root_dir``, so that one option decides
        where logs, checkpoints and meta-test files go (default: the working directory, as before)."""
        subcommand = self.config.get("subcommand")
        trainer = self.config[subcommand].trainer if subcommand else self.config.trainer
        root = trainer.get("default_root_dir")
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            save_dir = logger.get("init_args", {}).get("save_dir") if isinstance(logger, Namespace) else None
            if root and save_dir and not Path(save_dir).is_absolute():
                logger.init_args.save_dir = str(Path(root) / save_dir)

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_KEYWORDS:
            read_checkpoint(ckpt_path)


def main(args: list[str] | None = None) -> LightningCLI | None:
    """Run the CLI; a :class:`ConfigError` is printed as one line and exits with status 2, SIGTERM with 143. The
    process keeps freed memory for reuse (:func:`~lightning_l2o.allocator.keep_freed_memory`)."""
    keep_freed_memory()
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset` has `__len__` defined.*")
    # Checkpoints hold the state after each outer step, which is what resuming needs.
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    try:
        with config_errors_exit(args):
            return L2OCLI(
                L2OModule,
                TaskDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={**PARSER_OPTIONS, **{name: PARSER_OPTIONS for name in L2OCLI.subcommands()}},
                args=args,
            )
    except SIGTERMException:
        print("stopped by SIGTERM; last.ckpt holds the last completed outer step (resume with --ckpt_path)",
              file=sys.stderr)
        sys.exit(143)
