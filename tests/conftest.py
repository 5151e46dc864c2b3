"""Shared fixtures: tiny task templates, datamodules and trainers that run in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl

from datamodules import TaskDataModule
from lightning_l2o.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def quadratic(horizon: int = 20, dim: int = 5) -> TaskSpec:
    return TaskSpec("quadratic", arch={"dim": dim}, horizon=horizon)


def tiny_datamodule(**kwargs) -> TaskDataModule:
    defaults = {
        "train_tasks": [quadratic(25), TaskSpec("regression", arch={"inputs": 4}, batch_size=16, horizon=25)],
        "val_tasks": [quadratic(15)],
        "test_tasks": [quadratic(15), quadratic(15, dim=7)],
        "unroll_length": 10,
        "epoch_length": 5,
        "val_seeds": [201],
        "test_seeds": [101, 102],
    }
    return TaskDataModule(**{**defaults, **kwargs})


def tiny_trainer(root: Path, **kwargs) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu", "max_steps": 6, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
        "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": root,
    }
    return pl.Trainer(**{**defaults, **kwargs})


@pytest.fixture(autouse=True)
def _seed():
    pl.seed_everything(0, verbose=False)
