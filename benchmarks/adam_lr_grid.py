"""How much of a gap to tuned Adam could a finer learning-rate grid alone close? Adam tuned on two grids, paired.

    L2O_DATA_DIR=../shared/data python benchmarks/adam_lr_grid.py --seeds $(seq 101 120)

Adam's lr is chosen on task 17's validation seeds (the evaluation report's protocol, :func:`~lightning_l2o.report.
evaluation_report`) once over the replication report's grid (half-decades, ``--coarse``) and once over a finer one
(``--fine``); both choices then train the test seeds, and the table gives the fine choice's paired difference to the
coarse one in test accuracy and log10 final training loss with 95 % confidence intervals. A learned optimizer that
beats coarse-tuned Adam by less than this could be doing no more than choosing a better learning rate. Runs are
cached in ``benchmarks/results/replication/runs`` (shared with ``replication.py report``); the table goes to
``benchmarks/results/adam_lr_grid/<--name>.md``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from lightning_l2o.evaluation import log10_loss
from lightning_l2o.report import evaluation_report
from lightning_l2o.reporting import paired

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "replication" / "runs"


def tuned_adam(grid: list[float], seeds: list[int], val_seeds: list[int], steps: int, out: Path) -> dict[int, dict]:
    """Adam tuned over ``grid`` on task 17's ``val_seeds``, run on ``seeds``: ``{seed: {"lr", "accuracy_pct",
    "log10_loss"}}``."""
    trajectories = evaluation_report(tasks=["17"], seeds=seeds, steps=steps, baselines=["adam"], lr_grid=grid,
                                     val_seeds=val_seeds, out_dir=str(out), cache_dir=str(CACHE))
    return {t.spec.seed: {"lr": t.lr, "accuracy_pct": 100 * t.final["test_accuracy"],
                          "log10_loss": log10_loss(t.final_loss)} for t in trajectories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coarse", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--fine", type=float, nargs="+", default=[0.005, 0.007, 0.01, 0.014, 0.02, 0.028])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(101, 121)))
    parser.add_argument("--val-seeds", type=int, nargs="+", default=[201, 202])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--name", default="task17")
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    torch.set_num_threads(1)
    out = RESULTS / "adam_lr_grid"
    coarse = tuned_adam(args.coarse, args.seeds, args.val_seeds, args.steps, out / f"{args.name}_coarse")
    fine = tuned_adam(args.fine, args.seeds, args.val_seeds, args.steps, out / f"{args.name}_fine")
    lines = [(f"Adam on task 17, {args.steps} steps, lr tuned on validation seeds {args.val_seeds}; "
             f"{len(args.seeds)} paired test seeds ({min(args.seeds)}-{max(args.seeds)})."), "",
             "| grid | chosen lr | test accuracy (%) | log10 final train loss |", "|---|---|---|---|"]
    for label, grid, runs in (("coarse", args.coarse, coarse), ("fine", args.fine, fine)):
        lr = next(iter(runs.values()))["lr"]
        accuracy = sum(r["accuracy_pct"] for r in runs.values()) / len(runs)
        loss = sum(r["log10_loss"] for r in runs.values()) / len(runs)
        lines.append(f"| {label} {grid} | {lr:g} | {accuracy:.2f} | {loss:.3f} |")
    lines += ["", "| fine − coarse | Δ [95 % CI] | wins / losses | pairs (finite) | verdict |", "|---|---|---|---|---|"]
    for metric, unit, higher in (("accuracy_pct", "pp", True), ("log10_loss", "", False)):
        result = paired([fine[s][metric] for s in args.seeds], [coarse[s][metric] for s in args.seeds], higher)
        digits = 2 if higher else 3
        lines.append(f"| {metric} | {result.mean:+.{digits}f} [{result.low:+.{digits}f}, {result.high:+.{digits}f}] "
                     f"{unit} | {result.wins} / {result.losses} | {result.n} | {result.verdict} |")
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
