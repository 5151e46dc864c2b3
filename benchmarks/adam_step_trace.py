"""What a learned rule does to Adam's step along a trajectory: its ``adam_scale`` or ``adam_fast_weight``.

    L2O_DATA_DIR=../shared/data python benchmarks/adam_step_trace.py --checkpoints RUN.ckpt [RUN.ckpt ...] \
        --steps 3000 [--info adam_fast_weight] [--presets 17 fashion_mnist-width32 ...]

Each checkpoint's rule trains each of ``--presets`` (task 17 by default; validation seed 201 by default, never a
test seed) for ``--steps`` steps; the table (one row per run folder and preset) gives its ``--info`` at a few
steps, and ``benchmarks/results/adam_step_trace/<--name>.png`` plots the whole traces. ``adam_scale`` (rules meta-trained
with ``adam_scale: true``) is the mean over parameter tensors of ``10 ** tanh(s)``, the factor on Adam's step;
``adam_schedule`` (with ``adam_schedule: true``) the factor of the learned schedule alone, ``10 ** tanh(w . phi(t) + c)``;
``adam_fast_weight`` (with ``adam_fast_beta2``) the mean over coordinates of ``tanh(r)``, how far Adam's
denominator moves towards the fast second moment's (0: Adam's, 1: the fast one's); ``correction_rms`` (any rule with
``adam_lr``) the RMS over coordinates of the learned term added to Adam's step.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from lightning_l2o.checkpoints import PRETRAINED_PREFIX, load_meta_optimizer
from lightning_l2o.evaluation import meta_test
from lightning_l2o.tasks import TaskSpec

RESULTS = Path(__file__).resolve().parent / "results" / "adam_step_trace"
INFOS = {  # info key -> (the option that makes a rule report it, axis label)
    "adam_scale": ("adam_scale: true", "factor on Adam's step (mean over tensors)"),
    "adam_fast_weight": ("adam_fast_beta2", "weight of the fast second moment (mean)"),
    "adam_schedule": ("adam_schedule: true", "factor of the learned schedule on Adam's step"),
    "correction_rms": ("adam_lr", "RMS of the learned term added to Adam's step"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="fit checkpoints (<run>/checkpoints/<file>.ckpt) or pretrained:<name>")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=201)
    parser.add_argument("--presets", nargs="+", default=["17"])
    parser.add_argument("--name", default="task17")
    parser.add_argument("--info", choices=list(INFOS), default="adam_scale")
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    torch.set_num_threads(1)
    marks = [t for t in (1, 10, 30, 100, 300, 1000, 2000, 3000) if t <= args.steps]
    lines = ["| checkpoint | preset | " + " | ".join(f"step {t}" for t in marks) + " |", "|---" * (2 + len(marks)) + "|"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for path in args.checkpoints:
        rule = load_meta_optimizer(path)
        # a shipped rule's name, or a fit checkpoint's run folder: <run>/checkpoints/<file>.ckpt
        run = path.removeprefix(PRETRAINED_PREFIX) if path.startswith(PRETRAINED_PREFIX) else Path(path).parents[1].name
        for preset in args.presets:
            infos = meta_test(rule, TaskSpec(preset=preset, horizon=args.steps, seed=args.seed)).infos
            if args.info not in infos:
                raise SystemExit(f"{path}: its rule reports no {args.info}; give checkpoints of rules meta-trained "
                                 f"with {INFOS[args.info][0]}, or another --info")
            trace = infos[args.info]
            lines.append(f"| {run} | {preset} | "
                         + " | ".join(f"{trace[t - 1]:.3g}" for t in marks if t <= len(trace)) + " |")
            ax.plot(range(1, len(trace) + 1), trace, label=run if len(args.presets) == 1 else f"{run}, {preset}")
    ax.set(xlabel="inner step", ylabel=INFOS[args.info][1], title=f"seed {args.seed}", xscale="log")
    ax.legend()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{args.name}.png", dpi=120, bbox_inches="tight")
    table = "\n".join(lines)
    (RESULTS / f"{args.name}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
