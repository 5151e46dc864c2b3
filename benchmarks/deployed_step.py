"""Deployed step: the learned optimizers' achieved GFLOP/s against this machine's fp32 matmul, on one thread.

    python benchmarks/deployed_step.py [--repeats 10] [--chunk-size 16384]

On one intra-op thread (``torch.set_num_threads(1)``):

1. This machine's fp32 matmul throughput: a 2048 x 2048 by 2048 x 2048 product, best of the repeats, by
   ``torch.mm`` and by oneDNN (``linear_kernels.matmul_gflops``); the better of the two is the limit.
2. ``optimizer.step()`` on a 1,068,810-parameter MLP (784-1024-256-10) with fixed gradients, for
   ``torch.optim.Adam`` (``foreach`` and ``fused``) and the per-parameter rules: FF with each feature set (``kofinas``
   is the shipped ``ff_fashion_mnist_task17``, the others untrained), the LSTM, each in chunks (the default; FF
   ``kofinas`` through its compiled kernel, :mod:`lightning_l2o.meta_optimizers.fused_ff`, and in PyTorch's eager
   mode), in one chunk (``chunk_size`` = n, the pre-chunking computation, eager) and with ``network_dtype:
   bfloat16``. The steps are interleaved (one step of each optimizer per round); min and median over the rounds
   after a warm-up round.
3. Achieved GFLOP/s: the network's multiply-adds, ``2 x n x sum(in x out)`` over its layers (an LSTM cell counts
   its four gates, ``4 hidden x (in + hidden)``), over the step's best time (the whole ``step()``: features,
   network, update and the deploy wrapper's finiteness guard).
4. Each variant's update against the same rule in chunks of the default size, from the same parameters, gradient
   and state: the largest absolute difference (0: bit-identical) and the relative difference ``|d - d_ref| / |d_ref|``.
5. Where the shipped FF's eager step goes: its stages timed separately over all chunks, interleaved with the whole
   eager rule call (``rule(...)`` without the deploy wrapper): the feature state (momenta), the chunks' features,
   each dense layer (with its GFLOP/s), and the rest (the update ``theta + lr a exp(s b)``, concatenation, Python).

Appends its table to ``benchmarks/results/deployed_step.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linear_kernels import MATMUL_SIZE, interleaved, matmul_gflops
from results_table import save_report

from lightning_l2o import FFMetaOptimizer, LearnedOptimizer, LSTMMetaOptimizer, Opt2Vec
from lightning_l2o.checkpoints import load_meta_optimizer
from lightning_l2o.compiled_kernels import fused_kernels
from lightning_l2o.meta_optimizers.base import deployed_step
from lightning_l2o.meta_optimizers.linear import linear
from lightning_l2o.meta_optimizers.per_parameter import DEFAULT_CHUNK_SIZE, PerParameterOptimizer
from lightning_l2o.params import ParamLayout, ParamSpace


def mlp() -> nn.Module:
    """The 1,068,810-parameter MLP of ``benchmarks/speed.py``, with fixed gradients (standard deviation 1e-3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    return model


def timed(run: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds that ``run()`` takes, the CUDA queue drained before and after on a CUDA ``device``."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def network_flops_per_coordinate(rule: PerParameterOptimizer) -> int:
    """``2 x sum(in x out)`` over the rule's network: its linear layers and each LSTM cell's four gates."""
    macs = 0
    for module in rule.network.modules():
        if isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
        elif isinstance(module, nn.LSTMCell):
            macs += 4 * module.hidden_size * (module.input_size + module.hidden_size)
    return 2 * macs


@torch.no_grad()
def first_update(rule: PerParameterOptimizer, model: nn.Module) -> Tensor:
    """The rule's first deployed update ``(n,)`` of ``model``'s parameters, from its gradients and a fresh state."""
    space = ParamSpace.of_module(model)
    params = ParamLayout.flatten([p.detach() for p in model.parameters()])
    grads = ParamLayout.flatten([p.grad for p in model.parameters()])
    with deployed_step():
        new, _, _ = rule(params, grads, torch.tensor(0.0), rule.init_state(params, space), space, rule.lr)
    return new - params


BenchmarkedRule = tuple[PerParameterOptimizer, str | None, bool]
"""A rule, the name of the rule its update is compared with (``None``: itself a reference), and whether it runs in
PyTorch's eager mode, without the compiled FF kernel (:func:`run_eager`)."""


def learned_rules(chunk_size: int, n: int) -> dict[str, BenchmarkedRule]:
    """Each benchmarked rule by name (see :data:`BenchmarkedRule`)."""
    torch.manual_seed(0)
    bases = {
        "ff kofinas (ff_fashion_mnist_task17)": load_meta_optimizer("pretrained:ff_fashion_mnist_task17"),
        "ff metz": FFMetaOptimizer(features="metz"),
        "ff adam": FFMetaOptimizer(features="adam"),
        "lstm kofinas": LSTMMetaOptimizer(),
    }
    rules: dict[str, BenchmarkedRule] = {}
    for name, rule in bases.items():
        reference_name, reference = f"{name}, chunks of {chunk_size}", rule.with_config(chunk_size=chunk_size)
        rules[reference_name] = (reference, None, False)
        compiled = name.startswith("ff kofinas")  # the only rule with a compiled kernel
        if compiled:
            rules[f"{reference_name}, eager"] = (reference, reference_name, True)
        if compiled or name.startswith("lstm"):
            rules[f"{name}, one chunk{', eager' if compiled else ''}"] = (rule.with_config(chunk_size=n),
                                                                         reference_name, compiled)
            rules[f"{name}, bfloat16"] = (rule.with_config(chunk_size=chunk_size, network_dtype="bfloat16"),
                                          reference_name, False)
    return rules


def run_eager(eager: bool, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` without the compiled FF kernel if ``eager``, else ``run`` itself."""
    if not eager:
        return run

    def without_kernel() -> object:
        with fused_kernels(False):
            return run()

    return without_kernel


@torch.no_grad()
def stage_table(rule: PerParameterOptimizer, repeats: int, matmul: float) -> list[str]:
    """Markdown rows: the FF rule's eager step on :func:`mlp` split into stages, min over interleaved rounds.

    Each stage is timed where it runs, on the chunk its predecessor just produced (cache-hot, as in the step): the
    prefixes "features", "features + layer 1", ... of the per-chunk pipeline are timed whole, and a layer's time is
    the difference between consecutive prefixes; "rest" is the whole rule call less the feature state and the
    longest prefix (the update, concatenation, Python)."""
    model = mlp()
    space = ParamSpace.of_module(model)
    params = ParamLayout.flatten([p.detach() for p in model.parameters()])
    grads = ParamLayout.flatten([p.grad for p in model.parameters()])
    state = rule.init_state(params, space)
    layers = [module for module in rule.network.modules() if isinstance(module, nn.Linear)]
    chunks = list(rule._chunks(len(params)))
    features, _ = rule.features.prepare(params, grads, state, space)

    def prefix(depth: int) -> None:
        for rows in chunks:
            x = features(rows)
            for index, layer in enumerate(layers[:depth]):
                x = linear(x, layer.weight, layer.bias, relu=index < len(layers) - 1)

    runs: dict[str, Callable[[], object]] = {
        "whole": partial(rule, params, grads, torch.tensor(0.0), state, space, rule.lr),  # not a deployed step: eager
        "feature state": partial(rule.features.prepare, params, grads, state, space),
    }
    runs.update({f"prefix {depth}": partial(prefix, depth) for depth in range(len(layers) + 1)})
    best = {name: min(samples) for name, samples in interleaved(runs, repeats).items()}
    stages = {"feature state (momenta)": best["feature state"], "features of the chunks": best["prefix 0"]}
    for depth, layer in enumerate(layers):
        stages[f"layer {layer.in_features} → {layer.out_features}"] = best[f"prefix {depth + 1}"] - best[f"prefix {depth}"]
    stages["rest (update, concatenation, Python)"] = best["whole"] - best["feature state"] - best[f"prefix {len(layers)}"]
    lines = [f"Where the shipped FF's eager rule call goes ({len(chunks)} chunks of {rule.chunk_size}; min over the rounds):",
             "", "| stage | ms | GFLOP/s | % of matmul |", "|---|---|---|---|"]
    for (name, seconds), layer in zip(stages.items(), [None, None, *layers, None], strict=True):
        rate = None if layer is None else 2 * layer.in_features * layer.out_features * len(params) / seconds / 1e9
        cells = [name, f"{1e3 * seconds:.1f}"] + (["—", "—"] if rate is None else [f"{rate:.1f}", f"{100 * rate / matmul:.0f} %"])
        lines.append(f"| {' | '.join(cells)} |")
    lines.append(f"| whole rule call (no deploy wrapper) | {1e3 * best['whole']:.1f} | — | — |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help=f"the rules' chunk size (default {DEFAULT_CHUNK_SIZE})")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rates = matmul_gflops(max(args.repeats, 3))
    matmul = max(rates.values())
    n = sum(p.numel() for p in mlp().parameters())
    rules = learned_rules(args.chunk_size, n)
    optimizers: dict[str, Optimizer] = {
        f"torch.optim.Adam ({kind})": torch.optim.Adam(mlp().parameters(), lr=1e-3, **{kind: True})
        for kind in ("foreach", "fused")
    }
    optimizers["opt2vec"] = LearnedOptimizer(mlp(), Opt2Vec())
    optimizers.update({name: LearnedOptimizer(mlp(), rule) for name, (rule, _, _) in rules.items()})
    times = interleaved({name: run_eager(name in rules and rules[name][2], partial(
                             optimizer.step, *((0.0,) if isinstance(optimizer, LearnedOptimizer) else ())))
                         for name, optimizer in optimizers.items()}, args.repeats)  # a learned rule may read the loss
    updates = {name: run_eager(eager, partial(first_update, rule, mlp()))() for name, (rule, _, eager) in rules.items()}
    adam = statistics.median(times["torch.optim.Adam (foreach)"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"### {datetime.now():%Y-%m-%d %H:%M}: deployed step on an MLP with {n:,} parameters, 1 thread",
        "",
        (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
         f"load average {load} at the end; {args.repeats} interleaved rounds; chunk size {args.chunk_size}."),
        (f"fp32 matmul ({MATMUL_SIZE}^3, 1 thread): **{matmul:.1f} GFLOP/s**, the better of "
         + ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()) + "."),
        "",
        ("| optimizer | GFLOP / step | min (ms) | median (ms) | median × Adam (foreach) | GFLOP/s (min) "
         "| % of matmul | max abs diff of the update | relative diff |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, samples in times.items():
        best, median = min(samples), statistics.median(samples)
        cells = [name, "—", f"{1000 * best:.1f}", f"{1000 * median:.1f}", f"{median / adam:.3g}"] + ["—"] * 4
        if name in rules:
            rule, reference, _ = rules[name]
            gflop = network_flops_per_coordinate(rule) * n / 1e9
            cells[1], cells[5], cells[6] = f"{gflop:.2f}", f"{gflop / best:.1f}", f"{100 * gflop / best / matmul:.0f} %"
            cells[7:] = ["— (reference)"] * 2
            if reference is not None:
                delta = updates[name] - updates[reference]
                cells[7:] = [f"{delta.abs().max().item():.2g}", f"{(delta.norm() / updates[reference].norm()).item():.2%}"]
        lines.append(f"| {' | '.join(cells)} |")
    ff_name = next(name for name in rules if name.startswith("ff kofinas"))
    lines += ["", *stage_table(rules[ff_name][0], args.repeats, matmul)]
    save_report(lines, "deployed_step.md", append=True)


if __name__ == "__main__":
    main()
