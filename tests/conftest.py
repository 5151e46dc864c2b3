"""Shared fixtures: tiny task templates, datamodules and trainers that run in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules import TaskDataModule
from lightning_l2o.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
# Real datasets in torchvision's layout: $L2O_DATA_DIR when set (as the package reads it), else ../shared/data
# beside the checkout. Skip messages name the folder and where it came from.
_DATA_ENV = os.environ.get("L2O_DATA_DIR")
SHARED_DATA = Path(_DATA_ENV).expanduser().resolve() if _DATA_ENV else REPO.parent / "shared" / "data"
SHARED_DATA_SOURCE = (f"from L2O_DATA_DIR={_DATA_ENV}" if _DATA_ENV
                      else "../shared/data beside the checkout; set L2O_DATA_DIR to use another folder")


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


@pytest.fixture(scope="session")
def ff_checkpoint(tmp_path_factory) -> Path:
    """A fit checkpoint of a small FF rule after 2 outer steps on the tiny datamodule."""
    from lightning_l2o import FFMetaOptimizer, L2OModule
    from lightning_l2o.estimators import TruncatedBackprop

    pl.seed_everything(0, verbose=False)
    root = tmp_path_factory.mktemp("ff")
    trainer = tiny_trainer(root, max_steps=2)
    trainer.fit(L2OModule(FFMetaOptimizer(hidden_dim=8, num_layers=1), TruncatedBackprop("lookahead")), tiny_datamodule())
    trainer.save_checkpoint(root / "ff.ckpt")
    return root / "ff.ckpt"


@pytest.fixture
def float64():
    """float64 as the default dtype for the test (finite differences, exact gradients)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(autouse=True)
def _seed():
    pl.seed_everything(0, verbose=False)


_missing_raw = [str(SHARED_DATA / name / "raw") for name in ("FashionMNIST", "MNIST")
                if not (SHARED_DATA / name / "raw").is_dir()]
requires_shared_data = pytest.mark.skipif(
    bool(_missing_raw),
    reason=f"real FashionMNIST / MNIST files are not in {SHARED_DATA} ({SHARED_DATA_SOURCE}): "
           f"no {' or '.join(_missing_raw)}",
)


def write_fake_cifar10(root: Path, per_batch: int = 20, num_test: int = 30, seed: int = 0) -> Path:
    """Small CIFAR-10 files in its python pickle layout under ``root/cifar-10-batches-py``; returns ``root``."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = num_test if name == "test_batch" else per_batch
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory) -> Path:
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar"))
