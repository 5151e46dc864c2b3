"""Deployed step on a GPU: the shipped FF and PNA against ``torch.optim.AdamW(fused=True)``, in fp32, TF32 and bf16.

    python benchmarks/gpu_step.py [--device cuda] [--params 1000000 100000000] [--repeats 20] \
        [--chunk-sizes 16384 262144]

1. The device's matmul throughput: a square product of side ``--matmul-size`` (default 8192), best of the repeats,
   in fp32 (TF32 off), TF32 and bf16.
2. For each size in ``--params``: an MLP 784-w-w-10 with ``w`` chosen for about that many parameters and fixed
   gradients; ``optimizer.step()`` of ``AdamW(fused=True)`` and of each rule in ``--rules`` (the shipped
   ``ff_fashion_mnist_task17`` and ``pna_fashion_mnist_task17``) in each precision: ``fp32`` (TF32 off), ``tf32``
   (``torch.set_float32_matmul_precision("high")``) and ``bf16`` (``network_dtype: bfloat16``), at each
   ``--chunk-sizes`` (coordinates per chunk of the per-parameter network: the default 16,384 is sized for a CPU's
   cache; a GPU may want larger ones). Min / median over interleaved rounds after a warm-up round; the rule's GFLOP
   per step (``torch.utils.flop_counter``, one step); achieved GFLOP/s and its fraction of the matching matmul
   limit. PNA is skipped above ``--pna-max-params`` (each of its 64-wide message tensors over the graph's edges
   would need the GB the table states); a combination that runs out of device memory is reported as such.

Writes ``benchmarks/results/gpu_step_<device type>.md``. ``--device cpu --params 20000`` checks the script where no
GPU is lent (the CPU's own benchmark, with oneDNN's limit, is ``deployed_step.py``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployed_step import timed
from linear_kernels import interleaved
from results_table import min_median_ms, save_report

from lightning_l2o import LearnedOptimizer
from lightning_l2o.checkpoints import load_meta_optimizer
from lightning_l2o.meta_optimizers.linear import onednn
from lightning_l2o.meta_optimizers.per_parameter import DEFAULT_CHUNK_SIZE

MATMUL_PRECISION = {"fp32": "highest", "tf32": "high", "bf16": "highest"}
"""``torch.set_float32_matmul_precision`` for each precision (bf16 runs the network itself in bfloat16)."""
RULES = {"ff": "pretrained:ff_fashion_mnist_task17", "pna": "pretrained:pna_fashion_mnist_task17"}
PNA_CHANNELS = 64


def mlp_width(params: int) -> int:
    """The hidden width ``w`` of the MLP 784-w-w-10 closest to ``params`` parameters (``w^2 + 796 w + 10``)."""
    return max(1, round((-796 + math.sqrt(796**2 + 4 * (params - 10))) / 2))


def mlp(width: int, device: torch.device) -> nn.Module:
    """The MLP 784-``width``-``width``-10 on ``device``, with fixed gradients (standard deviation 1e-3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    model = model.to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return model


def matmul_gflops(device: torch.device, size: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of a ``size``-cubed product on ``device`` in each precision, best of ``repeats``."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    rates = {}
    for precision, matmul_precision in MATMUL_PRECISION.items():
        x, y = (a.bfloat16(), b.bfloat16()) if precision == "bf16" else (a, b)
        torch.set_float32_matmul_precision(matmul_precision)
        best = min(timed(partial(torch.mm, x, y), device) for _ in range(repeats + 1))
        rates[precision] = 2 * size**3 / best / 1e9
    torch.set_float32_matmul_precision("highest")
    return rates


def in_precision(precision: str, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with the float32 matmul precision of ``precision`` set around it."""
    def wrapped() -> object:
        torch.set_float32_matmul_precision(MATMUL_PRECISION[precision])
        try:
            return run()
        finally:
            torch.set_float32_matmul_precision("highest")
    return wrapped


def step_gflop(optimizer: LearnedOptimizer) -> float:
    """GFLOP of one ``optimizer.step()``'s matmuls (the counter does not see oneDNN's kernel, so it is off)."""
    with onednn(False), FlopCounterMode(display=False) as counter:
        optimizer.step(0.0)
    return counter.get_total_flops() / 1e9


def size_rows(params: int, args: argparse.Namespace, device: torch.device, limits: dict[str, float]) -> list[str]:
    """Markdown rows for the MLP of about ``params`` parameters."""
    width = mlp_width(params)
    n = width**2 + 796 * width + 10
    adam = torch.optim.AdamW(mlp(width, device).parameters(), lr=1e-3, fused=True)
    runs: dict[str, Callable[[], object]] = {"AdamW (fused)": adam.step}
    measured: dict[str, tuple[float, str]] = {}  # a learned optimizer's GFLOP per step and precision
    not_run: dict[str, str] = {}  # why a combination did not run
    for rule_name, precision, chunk_size in itertools.product(args.rules, MATMUL_PRECISION, args.chunk_sizes):
        name = f"{rule_name}, {precision}, chunk {chunk_size:,}"
        if rule_name == "pna" and n > args.pna_max_params:
            message_gb = 2 * n * PNA_CHANNELS * 4 / 1e9  # both edge directions, float32
            not_run[name] = f"skipped (> --pna-max-params): one message tensor would be {message_gb:.3g} GB"
            continue
        network_dtype = "bfloat16" if precision == "bf16" else "float32"
        rule = load_meta_optimizer(RULES[rule_name]).with_config(network_dtype=network_dtype, chunk_size=chunk_size)
        try:
            optimizer = LearnedOptimizer(mlp(width, device), rule)
            measured[name] = (in_precision(precision, partial(step_gflop, optimizer))(), precision)
        except torch.OutOfMemoryError:
            not_run[name] = "out of device memory"
            torch.cuda.empty_cache()
            continue
        runs[name] = in_precision(precision, partial(optimizer.step, 0.0))
    times = interleaved({name: partial(timed, run, device) for name, run in runs.items()}, args.repeats)
    adam_median = statistics.median(times["AdamW (fused)"])
    lines = [f"| {n:,} | {name} | {reason} | — | — | — | — |" for name, reason in not_run.items()]
    for name, samples in times.items():
        cells = ["—", min_median_ms(samples), f"{statistics.median(samples) / adam_median:.3g}", "—", "—"]
        if name in measured:
            gflop, precision = measured[name]
            rate = gflop / min(samples)
            cells[0], cells[3], cells[4] = f"{gflop:.2f}", f"{rate:.1f}", f"{100 * rate / limits[precision]:.0f} %"
        lines.append(f"| {n:,} | {name} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--params", type=int, nargs="+", default=[1_000_000, 100_000_000])
    parser.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--pna-max-params", type=int, default=20_000_000)
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[DEFAULT_CHUNK_SIZE])
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_step.py: --device cuda but torch sees no CUDA device; run it where a GPU is, or pass "
                 "--device cpu --params 20000 to check the script")
    limits = matmul_gflops(device, args.matmul_size, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [
        f"### {datetime.now():%Y-%m-%d %H:%M}: deployed step on {name}",
        "",
        f"torch {torch.__version__}; {args.repeats} interleaved rounds; matmul {args.matmul_size}^3: "
        + ", ".join(f"{precision} **{rate:.0f} GFLOP/s**" for precision, rate in limits.items()) + ".",
        "",
        ("| parameters | optimizer, precision | GFLOP / step | min / median (ms) | median × AdamW (fused) "
         "| GFLOP/s (min) | % of that precision's matmul |"),
        "|---|---|---|---|---|---|---|",
    ]
    for params in args.params:
        lines += size_rows(params, args, device, limits)
    save_report(lines, f"gpu_step_{device.type}.md", append=True)


if __name__ == "__main__":
    main()
