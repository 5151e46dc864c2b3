"""Does an lr warmup pay at the horizons a rule is meta-trained on? Adam with and without a linear warmup, per task
and horizon, in the terms of the meta-objective and of the evaluation.

    L2O_DATA_DIR=../shared/data python benchmarks/warmup_horizon.py [--presets 17 fashion_mnist-width8 ...] \
        [--horizons 500 1000] [--lr 0.02] [--warmup 100] [--seeds 301 302 303]

Tuned over (lr, warmup) on task 17's validation seeds, Adam with a 100-step warmup beats Adam tuned over lr alone
by 1.5 points over 1000 steps (``adam_knobs.py``), yet a per-tensor scale on Adam's step meta-trained with PES
(``adam_scale`` with progress features, which can express a warmup) did not learn one. For each preset in
``--presets`` (the ``ff_mixture`` config's training tasks by default; ``digits-mlp`` is its digits MLP) and each
horizon, Adam at ``--lr`` trains ``--seeds`` (neither validation nor test seeds) without and with a ``--warmup``-step
warmup; the table gives the PES meta-loss of ``configs/ff_mixture.yaml`` (the training loss divided by the loss at
initialisation, averaged over every step, as with ``final_fraction: 1``, and over the last half, as with
``final_fraction: 0.5``) and the log10 final full-data training loss, each the mean over the seeds, and the warmup's
difference (negative: the warmup is better). Runs are cached in ``benchmarks/results/replication/runs``; the table
goes to ``benchmarks/results/warmup_horizon/<--name>.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from results_table import RESULTS, save_report
from tqdm import tqdm

from lightning_l2o.evaluation import Trajectory, TrajectoryCache, log10_loss
from lightning_l2o.meta_optimizers.baselines import Adam
from lightning_l2o.tasks import TaskSpec

CACHE = RESULTS / "replication" / "runs"
MIXTURE = ("fashion_mnist-width8", "17", "fashion_mnist-width32", "fashion_mnist-depth1", "fashion_mnist-depth2",
           "mnist-width16", "digits-mlp")
DIGITS_MLP = {"family": "mlp", "dataset": "digits", "arch": {"hidden": [32]}, "batch_size": 64}


def spec(preset: str, horizon: int, seed: int) -> TaskSpec:
    """The task ``preset`` (or the mixture's ``digits-mlp``) at ``horizon`` steps and ``seed``."""
    fields = DIGITS_MLP if preset == "digits-mlp" else {"preset": preset}
    return TaskSpec(**fields, horizon=horizon, seed=seed)


def objectives(trajectory: Trajectory) -> tuple[float, float, float]:
    """Mean normalised training loss over every step and over the last half, and the log10 final training loss."""
    normalised = trajectory.losses / trajectory.losses[0]
    half = len(normalised) // 2
    return normalised.mean().item(), normalised[half:].mean().item(), log10_loss(trajectory.final_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(MIXTURE))
    parser.add_argument("--horizons", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[301, 302, 303])
    parser.add_argument("--name", default="mixture")
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    torch.set_num_threads(1)
    cache = TrajectoryCache(CACHE)
    warmups = (0, args.warmup)
    progress = tqdm(total=len(args.presets) * len(args.horizons) * len(warmups) * len(args.seeds), unit="run",
                    desc="evaluation runs")
    lines = [(f"Adam at lr {args.lr:g}, without and with a {args.warmup}-step linear warmup; mean over seeds "
             f"{', '.join(map(str, args.seeds))}."), "",
             ("| task | horizon | meta-loss, every step (no warmup / warmup / Δ) | meta-loss, last half (Δ) "
             "| log10 final train loss (Δ) |"), "|---|---|---|---|---|"]
    for preset in args.presets:
        for horizon in args.horizons:
            means = []
            for warmup in warmups:
                runs = []
                for seed in args.seeds:
                    rule = Adam(lr=args.lr, warmup_steps=warmup)
                    runs.append(objectives(cache.meta_test(rule, spec(preset, horizon, seed), "adam")))
                    progress.update()
                means.append([statistics.fmean(run[i] for run in runs) for i in range(3)])
            (every, half, final), (w_every, w_half, w_final) = means
            lines.append(f"| {preset} | {horizon} | {every:.4f} / {w_every:.4f} / {w_every - every:+.4f} | "
                         f"{half:.4f} / {w_half:.4f} ({w_half - half:+.4f}) | "
                         f"{final:.3f} / {w_final:.3f} ({w_final - final:+.3f}) |")
    progress.close()
    save_report(lines, f"warmup_horizon/{args.name}.md")


if __name__ == "__main__":
    main()
