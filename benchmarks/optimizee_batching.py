"""Does batching the optimizees of a meta-batch pay? B optimizees of one architecture, looped vs ``torch.func.vmap``.

    L2O_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/optimizee_batching.py [--device cuda]

Meta-training spends ~92 % of an inner step in the optimizee's own forward and backward (task 17), so that is what
batching the B optimizees of a meta-batch (``data.meta_batch_size``) would speed up. For each task and B, one
meta-training step's optimizee work is timed both ways: the training loss of each optimizee on its own batch, its
gradient with ``create_graph=True``, and the backward pass of a scalar of those gradients (the meta-loss's path
through them). ``looped``: one optimizee after another, as ``L2OModule`` runs the slots; ``vmapped``: one
``torch.func.vmap`` of the task's functional loss over the stacked parameters and batches (a convolution becomes a
grouped convolution, a linear layer a batched matmul). The two are interleaved over ``--rounds`` rounds (best /
median ms); the losses are checked to agree. A speed-up above 1 says batching pays on this device.

Writes ``benchmarks/results/optimizee_batching_<device>.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
from torch import Tensor
from torch.func import vmap

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployed_step import timed
from results_table import save_report

from lightning_l2o.tasks import Task, TaskSpec, build_task

TASKS = {
    "task 17 (CNN 16-32-32)": TaskSpec(preset="17"),
    "MLP 784-32-10": TaskSpec(family="mlp", dataset="fashion_mnist", arch={"hidden": [32]}, batch_size=128),
}


def optimizee_step(task: Task, params: Tensor, inputs: Tensor, targets: Tensor, batched: bool) -> Tensor:
    """Losses ``(B,)`` of ``params`` ``(B, n)`` on their batches ``(B, batch, ...)``, with the meta-backward through
    the gradients; looped or vmapped."""
    params = params.detach().requires_grad_()
    if batched:
        losses = vmap(task.loss)(params, (inputs, targets))
    else:
        losses = torch.stack([task.loss(p, (x, y)) for p, x, y in zip(params, inputs, targets)])
    (grads,) = torch.autograd.grad(losses.sum(), params, create_graph=True)
    grads.square().sum().backward()
    return losses.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    device = torch.device(args.device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} thread(s)")
    lines = [(f"torch {torch.__version__}, {name}; ms per meta-training step's optimizee work (best / median of "
              f"{args.rounds} interleaved rounds)"), "",
             "| task | B | looped ms | vmapped ms | speed-up of batching (median) | max loss difference |",
             "|---|---|---|---|---|---|"]
    for label, spec in TASKS.items():
        task = build_task(spec).to(device)
        for size in args.sizes:
            generators = [torch.Generator().manual_seed(slot) for slot in range(size)]
            params = torch.stack([task.init_params(g) for g in generators])
            batches = [task.sample_batch(g) for g in generators]
            inputs, targets = (torch.stack(column).to(device) for column in zip(*batches))
            looped = optimizee_step(task, params, inputs, targets, batched=False)
            difference = float((optimizee_step(task, params, inputs, targets, batched=True) - looped).abs().max())
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):
                for batched in (False, True):
                    times[batched].append(timed(partial(optimizee_step, task, params, inputs, targets, batched), device))
            loop_ms, vmap_ms = ([1e3 * t for t in times[b]] for b in (False, True))
            lines.append(f"| {label} | {size} | {min(loop_ms):.1f} / {statistics.median(loop_ms):.1f} | "
                         f"{min(vmap_ms):.1f} / {statistics.median(vmap_ms):.1f} | "
                         f"{statistics.median(loop_ms) / statistics.median(vmap_ms):.2f} | {difference:.1e} |")
            print(lines[-1], flush=True)
    save_report(lines, f"optimizee_batching_{device.type}.md")


if __name__ == "__main__":
    main()
