"""bf16 per-parameter networks against fp32 on task 17: the shipped FF trains each test seed both ways (paired).

    L2O_DATA_DIR=../shared/data python benchmarks/bf16_accuracy.py [--seeds 101 102 ...] [--steps 1000]

Prints and appends to ``benchmarks/results/bf16_accuracy.md``: per precision the mean test accuracy and final train
loss, and the paired difference bf16 − fp32 with its 95 % interval (:func:`lightning_l2o.reporting.paired`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from results_table import save_report

from lightning_l2o.checkpoints import load_meta_optimizer
from lightning_l2o.evaluation import log10_loss, meta_test
from lightning_l2o.reporting import paired
from lightning_l2o.tasks import TaskSpec

RULE = "pretrained:ff_fashion_mnist_task17"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(101, 111)))
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    torch.set_num_threads(1)
    fp32 = load_meta_optimizer(RULE)
    rules = {"float32": fp32, "bfloat16": fp32.with_config(network_dtype="bfloat16")}
    results: dict[str, list] = {name: [] for name in rules}
    for seed in args.seeds:
        spec = TaskSpec(preset="17", horizon=args.steps, seed=seed)
        for name, rule in rules.items():
            results[name].append(meta_test(rule, spec, method=name))
            print(f"seed {seed} {name}: {100 * results[name][-1].final['test_accuracy']:.2f} %", flush=True)
    accuracy = {name: [100 * t.final["test_accuracy"] for t in trajs] for name, trajs in results.items()}
    loss = {name: [log10_loss(t.final_loss) for t in trajs] for name, trajs in results.items()}
    acc, lss = paired(accuracy["bfloat16"], accuracy["float32"]), paired(loss["bfloat16"], loss["float32"], False)
    lines = [f"### {datetime.now():%Y-%m-%d %H:%M}: {RULE} on task 17, {args.steps} steps, seeds {args.seeds}", "",
             "| | fp32 | bf16 | bf16 − fp32 [95 % CI] | W/L/T |", "|---|---|---|---|---|",
             (f"| test accuracy (%) | {acc.reference:.2f} | {acc.ours:.2f} | {acc.mean:+.2f} [{acc.low:+.2f}, "
             f"{acc.high:+.2f}] | {acc.wins}/{acc.losses}/{acc.ties} |"),
             (f"| log10 final train loss | {lss.reference:.4f} | {lss.ours:.4f} | {lss.mean:+.4f} [{lss.low:+.4f}, "
             f"{lss.high:+.4f}] | {lss.wins}/{lss.losses}/{lss.ties} |")]
    if any(t.diverged for trajs in results.values() for t in trajs) or not math.isfinite(acc.mean):
        lines.append("\nSome runs diverged; their pairs are left out.")
    save_report(lines, "bf16_accuracy.md", append=True)


if __name__ == "__main__":
    main()
