"""Why does a shipped ``adam_schedule`` rule collapse where Adam trains? Its learned schedule against its learned term.

    L2O_DATA_DIR=../shared/data python benchmarks/schedule_collapse.py [--pretrained ff_mixture_adam_schedule] \
        [--preset fashion_mnist-depth5] [--seeds 107 111] [--adam-lr 0.01]

The rule's step is Adam's step times its learned schedule's factor plus a learned term. On each of ``--seeds`` of
``--preset`` four rules train the same optimizee: Adam at ``--adam-lr`` (the report's tuned lr), the shipped rule,
the shipped rule with its learned term switched off (output layer zeroed: Adam times the schedule alone), and Adam at
a constant lr equal to the schedule's peak step (the rule's own Adam lr times the largest factor of the shipped run).
If the schedule alone collapses like the shipped rule, the learned term is not the cause; if constant Adam at the
peak collapses too, the size of the step is. The table gives final test accuracy, log10 final training loss and the
collapse step (the first step ``t`` at which the mean loss over steps ``t - 19 .. t`` is over twice the lowest such
mean before; "-" if none, as for a run at chance from its start);
``benchmarks/results/schedule_collapse/<--name>.png`` plots the loss curves. Runs are read from and added to the report's cache ``benchmarks/results/replication/runs``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from results_table import RESULTS, save_report
from tqdm import tqdm

from lightning_l2o.checkpoints import PRETRAINED_PREFIX, load_meta_optimizer
from lightning_l2o.errors import ConfigError
from lightning_l2o.evaluation import Trajectory, TrajectoryCache, log10_loss
from lightning_l2o.meta_optimizers.baselines import Adam
from lightning_l2o.tasks import TaskSpec

CACHE = RESULTS / "replication" / "runs"
WINDOW = 20  # steps in the moving mean that the collapse step and the plot read
JUMP = 2.0  # a collapse: the moving mean over JUMP times its lowest value so far


def moving_mean(losses: torch.Tensor) -> torch.Tensor:
    """Mean over each window of ``WINDOW`` steps, ``(T - WINDOW + 1,)``: entry ``i`` ends at step ``i + WINDOW - 1``."""
    return losses.unfold(0, WINDOW, 1).mean(dim=1)


def collapse_step(losses: torch.Tensor) -> int | None:
    """The first step whose moving mean (of the window ending there) is over ``JUMP`` times the lowest moving mean
    before it; ``None`` if none."""
    means = moving_mean(losses)
    lowest = torch.cummin(means, dim=0).values
    jumps = torch.nonzero(means[1:] > JUMP * lowest[:-1])
    return int(jumps[0]) + WINDOW if len(jumps) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default="ff_mixture_adam_schedule")
    parser.add_argument("--preset", default="fashion_mnist-depth5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[107, 111])
    parser.add_argument("--adam-lr", type=float, default=0.01, help="the report's tuned Adam lr on this preset")
    parser.add_argument("--horizon", type=int, default=1000)
    parser.add_argument("--name", default="depth5")
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    torch.set_num_threads(1)
    cache = TrajectoryCache(CACHE)
    try:
        shipped = load_meta_optimizer(PRETRAINED_PREFIX + args.pretrained)
    except ConfigError as error:
        parser.error(f"--pretrained: {error}")
    if getattr(shipped, "schedule", None) is None:  # a schedule needs adam_lr, so the rule also has its Adam step
        parser.error(f"--pretrained {args.pretrained} has no learned schedule on an Adam step (adam_schedule); "
                     f"name one that has")
    schedule_alone = shipped.with_config()
    with torch.no_grad():
        schedule_alone.output_layer.weight.zero_()
        schedule_alone.output_layer.bias.zero_()
    lines = [f"`{args.pretrained}` on {args.preset}, {args.horizon} steps; Adam at lr {args.adam_lr:g}.", "",
             "| seed | rule | test acc % | log10 final train loss | collapse step |", "|---|---|---|---|---|"]
    fig, axes = plt.subplots(1, len(args.seeds), figsize=(5 * len(args.seeds), 3.5), squeeze=False)
    progress = tqdm(total=4 * len(args.seeds), unit="run", desc="evaluation runs")
    for seed, ax in zip(args.seeds, axes[0]):
        spec = TaskSpec(preset=args.preset, horizon=args.horizon, seed=seed)
        runs: dict[str, Trajectory] = {}
        for label, rule, method in (("Adam", Adam(lr=args.adam_lr), "adam"),
                                    ("shipped rule", shipped, args.pretrained),
                                    ("schedule alone", schedule_alone, f"{args.pretrained}_schedule_alone")):
            runs[label] = cache.meta_test(rule, spec, method)
            progress.update()
        peak = float(runs["shipped rule"].infos["adam_schedule"].max())
        peak_lr = shipped.adam.lr * peak
        runs[f"Adam at the peak lr {peak_lr:.3g}"] = cache.meta_test(Adam(lr=peak_lr), spec, "adam")
        progress.update()
        for label, run in runs.items():
            step = collapse_step(run.losses)
            accuracy = "diverged" if run.diverged else f"{100 * run.final['test_accuracy']:.1f}"
            lines.append(f"| {seed} | {label} | {accuracy} | {log10_loss(run.final_loss):.3f} | "
                         f"{'-' if step is None else step} |")
            ax.plot(torch.arange(WINDOW - 1, len(run.losses)), moving_mean(run.losses), label=label, lw=1)
        ax.set(title=f"{args.preset}, seed {seed}", xlabel="step", ylabel=f"training loss ({WINDOW}-step mean)",
               yscale="log")
        ax.legend(fontsize=7)
    progress.close()
    fig.tight_layout()
    out = save_report(lines, f"schedule_collapse/{args.name}.md")
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
