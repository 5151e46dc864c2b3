"""fp32 dense products on one CPU thread: PyTorch's ``mm`` (MKL here) against oneDNN, as the learned optimizers use it.

    python benchmarks/linear_kernels.py [--repeats 20]

1. This machine's fp32 matmul throughput by both kernels: a 2048^3 product through ``torch.mm`` and through
   :func:`lightning_l2o.meta_optimizers.linear.linear` (oneDNN), best of the repeats. The other benchmarks take
   the better of the two as "the machine's matmul throughput" (:func:`matmul_gflops`).
2. The products of a per-parameter network on task 17's 14,378 coordinates at hidden width 64: a hidden layer's
   forward (``addmm`` then in-place ReLU, against oneDNN with bias and ReLU fused) and the backward's input
   gradient ``(n, 64) @ (64, 64)`` and weight gradient ``(64, n) @ (n, 64)`` (by ``torch.mm`` in the rules: oneDNN
   is slower on this transposed product here).
3. PNA's per-parameter read-out (8 hidden layers of 64 on 14,378 coordinates), forward and backward, with the
   layers through oneDNN and through ``F.linear``.
Rounds are interleaved; min / median in ms. Writes ``benchmarks/results/linear_kernels.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_table import min_median_ms, save_report

from lightning_l2o.meta_optimizers.ff import PerParameterMLP
from lightning_l2o.meta_optimizers.linear import ONEDNN_AVAILABLE, linear, onednn, uses_onednn

MATMUL_SIZE = 2048
COORDINATES, HIDDEN = 14378, 64


def interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, one of each per round, after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if i:
                times[name].append(time.perf_counter() - start)
    return times


def matmul_gflops(repeats: int, size: int = MATMUL_SIZE) -> dict[str, float]:
    """fp32 GFLOP/s of a square product of side ``size`` by ``torch.mm`` and, where this build has it, by oneDNN."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    b_t = b.t().contiguous()
    runs: dict[str, Callable[[], object]] = {"torch.mm": lambda: a @ b}
    if uses_onednn(a):
        runs["oneDNN"] = lambda: linear(a, b_t)
    return {name: 2 * size**3 / min(t) / 1e9 for name, t in interleaved(runs, repeats).items()}


def layer_products(repeats: int) -> dict[str, list[float]]:
    x, grad = torch.randn(COORDINATES, HIDDEN), torch.randn(COORDINATES, HIDDEN)
    weight, bias = torch.randn(HIDDEN, HIDDEN), torch.randn(HIDDEN)
    weight_t = weight.t().contiguous()
    return interleaved({
        "hidden layer forward: addmm + ReLU": lambda: torch.addmm(bias, x, weight.t()).relu_(),
        "hidden layer forward: oneDNN, bias and ReLU fused": lambda: linear(x, weight, bias, relu=True),
        "input gradient (n, 64) @ (64, 64): torch.mm": lambda: grad @ weight,
        "input gradient (n, 64) @ (64, 64): oneDNN": lambda: linear(grad, weight_t),
        "weight gradient (64, n) @ (n, 64): torch.mm": lambda: grad.t() @ x,
        "weight gradient (64, n) @ (n, 64): oneDNN": lambda: linear(grad.t(), x.t()),
    }, repeats)


def read_out(repeats: int) -> dict[str, list[float]]:
    head = PerParameterMLP(HIDDEN + 14, HIDDEN, 8)
    shared = torch.randn(COORDINATES // 7, HIDDEN, requires_grad=True)
    owner = torch.randint(0, shared.shape[0], (COORDINATES,))
    features, grad = torch.randn(COORDINATES, 14), torch.randn(COORDINATES, 2)

    def run(enabled: bool) -> None:
        with onednn(enabled):
            head.forward_projected(head.project_shared(shared)[owner], features).backward(grad)

    runs = {"layers through F.linear": lambda: run(False)}
    if ONEDNN_AVAILABLE:
        runs["layers through oneDNN"] = lambda: run(True)
    return interleaved(runs, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [(f"torch {torch.__version__}, 1 CPU thread, load average {load}; {args.repeats} interleaved rounds, "
              "min / median"), "", f"| fp32 {MATMUL_SIZE}^3 product | GFLOP/s (best) |", "|---|---|"]
    lines += [f"| {name} | {rate:.1f} |" for name, rate in matmul_gflops(args.repeats).items()]
    lines += ["", f"| product on {COORDINATES:,} coordinates, width {HIDDEN} | ms |", "|---|---|"]
    lines += [f"| {name} | {min_median_ms(t, 2)} |" for name, t in layer_products(args.repeats).items()]
    lines += ["", f"| PNA's read-out (8 x {HIDDEN}) on {COORDINATES:,} coordinates, forward + backward | ms |", "|---|---|"]
    lines += [f"| {name} | {min_median_ms(t, 2)} |" for name, t in read_out(args.repeats).items()]
    save_report(lines, "linear_kernels.md")


if __name__ == "__main__":
    main()
