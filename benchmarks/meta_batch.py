"""Meta-batches of optimizees per outer step: inner steps per second and the outer gradient's variance.

    L2O_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/meta_batch.py

For ``data.meta_batch_size`` B in 1, 4 and 8, FF meta-trains on task 17 (FashionMNIST CNN, batch 128; horizon 100
cut into segments of 20 inner steps, the mean training loss of each segment backpropagated through it):

- inner steps per second of a real ``Trainer.fit`` (B x 20 inner steps per outer step, the second outer step
  timed; the sizes interleaved over ``--rounds`` rounds; best and median);
- the outer gradient's variance at the untrained rule: the meta-gradient of the first outer step (before
  clipping), drawn ``--repeats`` times from independent task streams, as the trace of its covariance,
  ``tr Cov = sum_r |g_r - mean g|^2 / (R - 1)``, beside ``|mean g|^2``. Averaging B independent slots should
  divide it by B, so ``B * tr Cov`` stays about constant.

Writes ``benchmarks/results/meta_batch.md``.
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
from speed import OuterStepTimer

from datamodules import TaskDataModule
from lightning_l2o import FFMetaOptimizer, L2OModule
from lightning_l2o.tasks import TaskSpec

UNROLL = 20
TASK = TaskSpec(preset="17", horizon=100)


class FirstMetaGradient(pl.Callback):
    """The meta-gradient as the first outer update is applied (flattened)."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: L2OModule, optimizer: torch.optim.Optimizer) -> None:
        if trainer.global_step == 0:
            self.gradient = torch.cat([p.grad.flatten() for p in module.meta_optimizer.parameters()])


def fit(meta_batch_size: int, outer_steps: int, stream_seed: int, callbacks: list[pl.Callback]) -> None:
    """``outer_steps`` of FF meta-training from the same initial rule, tasks drawn from ``stream_seed``."""
    pl.seed_everything(0, verbose=False)
    datamodule = TaskDataModule([TASK], [TASK], [TASK], unroll_length=UNROLL, epoch_length=outer_steps,
                                seed=stream_seed, meta_batch_size=meta_batch_size)
    module = L2OModule(FFMetaOptimizer(), outer_lr=3e-4, gradient_clip_val=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=outer_steps, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=callbacks)
    trainer.fit(module, datamodule)


def inner_steps_per_second(sizes: list[int], rounds: int) -> dict[int, list[float]]:
    """Inner steps per second of each meta-batch size, one timed outer step (after a warm-up step) per size and
    round, the sizes interleaved round by round so that a busy machine slows them alike."""
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            timer = OuterStepTimer()
            fit(size, 2, 0, [timer])
            rates[size].append(size * UNROLL / timer.times[1])
    return rates


def gradient_variance(meta_batch_size: int, repeats: int) -> tuple[float, float]:
    """``tr Cov`` of the first meta-gradient over ``repeats`` independent meta-batches, and ``|mean|^2``."""
    gradients = []
    for repeat in range(repeats):
        capture = FirstMetaGradient()
        fit(meta_batch_size, 1, 1000 + repeat, [capture])
        gradients.append(capture.gradient)
    stacked = torch.stack(gradients)
    mean = stacked.mean(0)
    return float(((stacked - mean) ** 2).sum() / (repeats - 1)), float(mean.square().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--repeats", type=int, default=12, help="independent first meta-gradients per size")
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    lines = [(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); FF on task 17, segments of "
              f"{UNROLL} inner steps, {args.repeats} independent first meta-gradients per size"), "",
             ("| meta-batch B | inner steps / s (best / median) | tr Cov of the meta-gradient | B x tr Cov | "
              "\\|mean\\|² | variance wall s |"), "|---|---|---|---|---|---|"]
    rates = inner_steps_per_second(args.sizes, args.rounds)
    for size in args.sizes:
        start = time.perf_counter()
        trace, mean_norm = gradient_variance(size, args.repeats)
        lines.append(f"| {size} | {max(rates[size]):.1f} / {statistics.median(rates[size]):.1f} | {trace:.3g} | "
                     f"{size * trace:.3g} | {mean_norm:.3g} | {time.perf_counter() - start:.0f} |")
        print(lines[-1], flush=True)
    save_report(lines, "meta_batch.md")


if __name__ == "__main__":
    main()
