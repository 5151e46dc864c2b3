"""Is there more than a learning rate to find on task 17? Adam tuned over (lr, beta2, warmup, weight decay) against
Adam tuned over lr.

    L2O_DATA_DIR=../shared/data python benchmarks/adam_knobs.py --lrs 0.007 0.01 0.012 0.015 0.02 0.025 \
        --beta2 0.99 0.999 --val-seeds $(seq 201 210) --seeds $(seq 101 140)

A learned rule that only rescales Adam's step can at best match an Adam whose lr is well tuned. This measures what
more hand-tuned knobs add on top: the second-moment decay ``beta2``, a linear lr warmup over ``--warmup`` steps
(:class:`~lightning_l2o.meta_optimizers.Adam`'s ``warmup_steps``) and decoupled weight decay ``--weight-decay``
(AdamW's; Adam's default is none). Both Adams are chosen by the evaluation report's criterion
(:func:`~lightning_l2o.evaluation.best_settings`: the lowest mean log10 final training loss on task 17's validation
seeds): once over ``--lrs`` at beta2 0.999 (``torch.optim.Adam``'s default) without warmup or weight decay, once
over every (lr, beta2, warmup, weight decay) setting. Both then train the test seeds; the table gives the validation
score of every setting and the paired difference (knob-tuned − lr-tuned) in test accuracy and log10 final training
loss with 95 % confidence intervals.
``--checkpoints NAME=PATH ...`` (a ``fit`` checkpoint or ``pretrained:<name>``) adds each learned rule, run on the
same test seeds, paired against both Adams.
Runs are cached in ``benchmarks/results/replication/runs`` (shared with ``replication.py report`` and
``adam_lr_grid.py``); the table goes to ``benchmarks/results/adam_knobs/<--name>.md``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from results_table import RESULTS, save_report
from tqdm import tqdm

from lightning_l2o.checkpoints import load_meta_optimizer
from lightning_l2o.evaluation import Trajectory, TrajectoryCache, best_settings, log10_loss, validation_scores
from lightning_l2o.meta_optimizers import MetaOptimizer
from lightning_l2o.meta_optimizers.baselines import Adam
from lightning_l2o.reporting import paired
from lightning_l2o.tasks import TaskSpec

CACHE = RESULTS / "replication" / "runs"
DEFAULT_BETA2 = 0.999
KNOBS = "(lr, beta2, warmup, weight decay)"
METRICS: tuple[tuple[str, Callable[[Trajectory], float], bool], ...] = (  # label, value of a run, higher is better
    ("test accuracy (pp)", lambda t: 100 * t.final["test_accuracy"], True),
    ("log10 final train loss", lambda t: log10_loss(t.final_loss), False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.007, 0.01, 0.012, 0.015, 0.02, 0.025])
    parser.add_argument("--beta2", type=float, nargs="+", default=[0.99, DEFAULT_BETA2])
    parser.add_argument("--warmup", type=int, nargs="+", default=[0],
                        help="linear lr warmup lengths in steps (0: none; the lr-only tuning uses 0)")
    parser.add_argument("--weight-decay", type=float, nargs="+", default=[0.0],
                        help="decoupled weight decays (AdamW's; 0: none, which the lr-only tuning uses)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(101, 141)))
    parser.add_argument("--val-seeds", type=int, nargs="+", default=list(range(201, 211)))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--name", default="task17")
    parser.add_argument("--checkpoints", nargs="*", default=[], metavar="NAME=PATH",
                        help="learned rules to pair against both Adams, e.g. ff_mixture=pretrained:ff_mixture_adam_scale")
    args = parser.parse_args()
    if DEFAULT_BETA2 not in args.beta2:
        parser.error(f"--beta2 must include {DEFAULT_BETA2}, the lr-only tuning's beta2")
    if 0 not in args.warmup:
        parser.error("--warmup must include 0, the lr-only tuning's (no warmup)")
    if 0 not in args.weight_decay:
        parser.error("--weight-decay must include 0, the lr-only tuning's (no weight decay)")
    if set(args.seeds) & set(args.val_seeds):
        parser.error("--seeds and --val-seeds must be disjoint: tuning never sees a test seed")
    if any("=" not in entry for entry in args.checkpoints):
        parser.error(f"--checkpoints entries are NAME=PATH, got {args.checkpoints}")
    learned = {name: load_meta_optimizer(path) for name, path in (e.split("=", 1) for e in args.checkpoints)}
    os.environ.setdefault("L2O_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    torch.set_num_threads(1)
    template = TaskSpec(preset="17", horizon=args.steps)
    rows = list(itertools.product(args.weight_decay, args.warmup, args.beta2))
    settings = [(lr, beta2, warmup, decay) for decay, warmup, beta2 in rows for lr in args.lrs]
    cache = TrajectoryCache(CACHE)
    total_runs = len(settings) * len(args.val_seeds) + (2 + len(learned)) * len(args.seeds)
    progress = tqdm(total=total_runs, desc="evaluation runs", unit="run")

    def run(setting: tuple[float, float, int, float], seed: int) -> Trajectory:
        lr, beta2, warmup, decay = setting
        return run_rule(Adam(lr=lr, beta2=beta2, warmup_steps=warmup, weight_decay=decay), "adam", seed)

    def run_rule(rule: MetaOptimizer, method: str, seed: int) -> Trajectory:
        trajectory = cache.meta_test(rule, template.with_seed(seed), method)
        progress.update()
        return trajectory

    # best_settings chooses, per method, the setting with the lowest mean validation loss: the report's own criterion
    grid = {("adam", setting, str(seed)): run(setting, seed) for setting in settings for seed in args.val_seeds}
    lr_only = {key: t for key, t in grid.items() if key[1][1:] == (DEFAULT_BETA2, 0, 0)}
    chosen = {label: best_settings(runs)[("adam", template.family)] for label, runs in (("lr", lr_only), (KNOBS, grid))}
    scores = {setting: score for (_, _, setting), score in validation_scores(grid).items()}

    test = {label: {seed: run(setting, seed) for seed in args.seeds} for label, setting in chosen.items()}
    test.update({name: {seed: run_rule(rule, name, seed) for seed in args.seeds} for name, rule in learned.items()})
    progress.close()
    lines = [(f"Adam on task 17, {args.steps} steps; validation seeds {min(args.val_seeds)}-{max(args.val_seeds)} "
              f"({len(args.val_seeds)}), {len(args.seeds)} paired test seeds ({min(args.seeds)}-{max(args.seeds)})."), "",
             "| beta2, warmup, weight decay \\ lr | " + " | ".join(f"{lr:g}" for lr in args.lrs) + " |",
             "|---" * (1 + len(args.lrs)) + "|"]
    for decay, warmup, beta2 in rows:
        lines.append(f"| {beta2:g}, {warmup}, {decay:g} | "
                     + " | ".join(f"{scores[(lr, beta2, warmup, decay)]:.3f}" for lr in args.lrs) + " |")
    lines += ["", "(mean validation log10 final train loss; lower is better)", "",
              f"| tuned over | chosen {KNOBS} | test accuracy (%) | log10 final train loss |", "|---|---|---|---|"]
    for label, runs in test.items():
        setting = "({:g}, {:g}, {}, {:g})".format(*chosen[label]) if label in chosen else "— (learned)"
        means = [statistics.fmean(value(t) for t in runs.values()) for _, value, _ in METRICS]
        lines.append(f"| {label} | {setting} | {means[0]:.2f} | {means[1]:.3f} |")
    lines += ["", "| comparison | metric | Δ [95 % CI] | wins / losses | pairs | verdict |", "|---|---|---|---|---|---|"]
    comparisons = [(KNOBS, "lr")] + [(name, reference) for name in learned for reference in chosen]
    for ours, reference in comparisons:
        name = ours if ours in learned else f"Adam tuned over {ours}"
        for label, value, higher in METRICS:
            result = paired([value(test[ours][s]) for s in args.seeds], [value(test[reference][s]) for s in args.seeds],
                            higher)
            digits = 2 if higher else 3
            lines.append(f"| {name} − Adam tuned over {reference} | {label} | {result.mean:+.{digits}f} "
                         f"[{result.low:+.{digits}f}, {result.high:+.{digits}f}] | {result.wins} / {result.losses} | "
                         f"{result.n} | {result.verdict} |")
    save_report(lines, f"adam_knobs/{args.name}.md")


if __name__ == "__main__":
    main()
