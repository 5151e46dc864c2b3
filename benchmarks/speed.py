"""Speed: meta-training throughput on task 17 and deployed step time against ``torch.optim.Adam``.

    L2O_DATA_DIR=../shared/data python benchmarks/speed.py

1. Meta-training: inner steps per second of FF and LSTM on task 17 (FashionMNIST CNN, batch 128), with the
   reference's greedy one-step lookahead (``backprop_window: 1``) and with backpropagation through the whole
   100-step unroll; timed over outer steps of a real ``Trainer.fit`` after one warm-up step.
2. Deployment: median ``optimizer.step()`` time on a 1.07M-parameter MLP (784-1024-256-10) with gradients
   in place, relative to ``torch.optim.Adam``.
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
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_table import save_report

from datamodules import TaskDataModule
from lightning_l2o import FFMetaOptimizer, L2OModule, LearnedOptimizer, LSTMMetaOptimizer, Opt2Vec
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


def step_time(make_optimizer, model: nn.Module, repeats: int) -> float:
    """Median seconds of one ``optimizer.step()`` with fixed gradients."""
    optimizer = make_optimizer(model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    times = []
    for i in range(repeats + 5):
        start = time.perf_counter()
        optimizer.step(0.0) if isinstance(optimizer, LearnedOptimizer) else optimizer.step()
        if i >= 5:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outer-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    torch.manual_seed(0)
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", "",
             "| meta-training on task 17 | backprop | inner steps / s |", "|---|---|---|"]
    for name, cls in (("ff", FFMetaOptimizer), ("lstm", LSTMMetaOptimizer)):
        for label, window in (("one step (reference)", 1), ("whole 100-step unroll", None)):
            rate = meta_training_rate(cls, window, args.outer_steps)
            lines.append(f"| {name} | {label} | {rate:.1f} |")
            print(lines[-1], flush=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    n = sum(p.numel() for p in model.parameters())
    optimizers = {
        "torch.optim.Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
        "ff (kofinas)": lambda p: LearnedOptimizer(p, FFMetaOptimizer()),
        "ff (metz)": lambda p: LearnedOptimizer(p, FFMetaOptimizer(features="metz")),
        "lstm (kofinas)": lambda p: LearnedOptimizer(p, LSTMMetaOptimizer()),
        "opt2vec": lambda p: LearnedOptimizer(p, Opt2Vec()),
    }
    times = {name: step_time(make, model, args.repeats) for name, make in optimizers.items()}
    adam = times["torch.optim.Adam"]
    lines += ["", f"| deployed optimizer, MLP with {n:,} parameters | step time (ms) | × Adam |", "|---|---|---|"]
    lines += [f"| {name} | {1000 * t:.2f} | {t / adam:.1f} |" for name, t in times.items()]
    save_report(lines, "speed.md")


if __name__ == "__main__":
    main()
