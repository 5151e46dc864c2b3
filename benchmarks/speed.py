"""Speed of meta-training: inner steps per second on task 17 (the deployed step: ``benchmarks/deployed_step.py``).

    L2O_DATA_DIR=../shared/data python benchmarks/speed.py

Inner steps per second of FF and LSTM on task 17 (FashionMNIST CNN, batch 128), with the
   reference's greedy one-step lookahead (``backprop_window: 1``) and with backpropagation through the whole
   100-step unroll; timed over outer steps of a real ``Trainer.fit`` after one warm-up step.
Writes ``benchmarks/results/speed.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_table import save_report

from datamodules import TaskDataModule
from lightning_l2o import FFMetaOptimizer, L2OModule, LSTMMetaOptimizer
from lightning_l2o.allocator import keep_freed_memory
from lightning_l2o.estimators import TruncatedBackprop
from lightning_l2o.tasks import TaskSpec

INNER_STEPS = 100


class OuterStepTimer(pl.Callback):
    """Wall time of every training batch (one outer step)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self._start)


def meta_training_rate(rule_cls: type, window: int | None, outer_steps: int) -> float:
    """Inner steps per second of meta-training ``rule_cls`` on task 17 (first outer step excluded)."""
    pl.seed_everything(0, verbose=False)
    task = TaskSpec(preset="17", horizon=INNER_STEPS)
    datamodule = TaskDataModule([task], [task], [task], unroll_length=None, epoch_length=outer_steps + 1)
    module = L2OModule(rule_cls(), TruncatedBackprop("lookahead", "same", backprop_window=window),
                       outer_lr=3e-4, weight_decay=1e-4, gradient_clip_val=None)
    timer = OuterStepTimer()
    trainer = pl.Trainer(accelerator="cpu", max_steps=outer_steps + 1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer])
    trainer.fit(module, datamodule)
    return INNER_STEPS / statistics.mean(timer.times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outer-steps", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    keep_freed_memory()  # as `python -m lightning_l2o fit` does
    torch.manual_seed(0)
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", "",
             "| meta-training on task 17 | backprop | inner steps / s |", "|---|---|---|"]
    for name, cls in (("ff", FFMetaOptimizer), ("lstm", LSTMMetaOptimizer)):
        for label, window in (("one step (reference)", 1), ("whole 100-step unroll", None)):
            rate = meta_training_rate(cls, window, args.outer_steps)
            lines.append(f"| {name} | {label} | {rate:.1f} |")
            print(lines[-1], flush=True)
    save_report(lines, "speed.md")


if __name__ == "__main__":
    main()
