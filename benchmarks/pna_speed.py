"""PNA against FF: meta-training inner step, peak memory, deployed step and achieved GFLOP/s (one CPU thread).

    L2O_DATA_DIR=../shared/data python benchmarks/pna_speed.py
    L2O_DATA_DIR=../shared/data python benchmarks/pna_speed.py --inner-steps-of ff pna rt nfn   # sections 1-2 only

1. Meta-training inner step (the reference's one-step lookahead on the same batch, parameters detached after
   the step: the optimizee's forward and backward, the rule's forward, the lookahead loss and the backward
   through the rule) on task 17 and on ``fashion_mnist-width128``; FF, PNA, PNA with its message passing in
   PyTorch's eager mode (without the compiled kernels of ``gnn/message_passing.py``: what they buy) and PNA with a
   2-layer read-out (``head_layers=2``, not the reference's 8: what a shallower read-out buys), the relational
   transformer (``rt``) and NFN (``nfn``), each at its reference size, interleaved in one process, min / median over repeats. The process keeps freed memory for reuse, as ``fit`` does
   (:func:`lightning_l2o.allocator.keep_freed_memory`).
2. Peak memory of those inner steps: each (rule, task) in a fresh subprocess, the peak RSS during the steps
   (``VmHWM``, reset through ``/proc/self/clear_refs`` once imports, the task and the rule are built) minus the
   RSS at that point.
3. Deployed ``optimizer.step()`` on a 1.07M-parameter MLP (784-1024-256-10), FF and PNA (with and without the
   compiled message passing) against ``torch.optim.Adam``.
4. FLOPs of the rule's forward and backward on task 17 (``torch.utils.flop_counter``), divided by its time:
   achieved GFLOP/s, beside this machine's fp32 matmul GFLOP/s (``linear_kernels.matmul_gflops``).
5. One ``FiLMPNAConv`` layer's forward and backward on task 17's graph: through the compiled kernel (as PNA runs
   it), in eager mode with max / min aggregated by segment over the target-sorted edges, and in eager mode by
   torch_geometric's ``scatter`` (no ``target_ptr``).
Writes ``benchmarks/results/pna_speed.md``; with ``--inner-steps-of RULE ...``, sections 1 and 2 for those rules
only, to ``benchmarks/results/pna_speed_inner_steps.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linear_kernels import interleaved, matmul_gflops
from results_table import min_median_ms, save_report

from lightning_l2o import (
    FFMetaOptimizer,
    LearnedOptimizer,
    NFNMetaOptimizer,
    PNAMetaOptimizer,
    RelationalTransformerMetaOptimizer,
)
from lightning_l2o.allocator import keep_freed_memory
from lightning_l2o.compiled_kernels import fused_kernels
from lightning_l2o.meta_optimizers.linear import onednn
from lightning_l2o.tasks import TaskSpec
from lightning_l2o.unroll import InnerState, unroll

EAGER_PNA = "pna, eager message passing"
RULES = {"ff": FFMetaOptimizer, "pna": PNAMetaOptimizer, EAGER_PNA: PNAMetaOptimizer,
         "pna, head_layers=2": functools.partial(PNAMetaOptimizer, head_layers=2), "rt": RelationalTransformerMetaOptimizer,
         "nfn": NFNMetaOptimizer}
"""FF, PNA in the reference setting (a read-out of 8 hidden layers per parameter), the same PNA with the compiled
kernels off (:data:`EAGER_PNA`), for the trade-off PNA with a 2-layer read-out, which departs from the reference,
and the relational transformer and NFN in their reference settings (both tasks have NFN's default 4 layers)."""


def kernels_for(name: str) -> AbstractContextManager[None]:
    """The compiled kernels on for every rule but :data:`EAGER_PNA`."""
    return fused_kernels(name != EAGER_PNA)
TASKS = ("17", "fashion_mnist-width128")


def inner_step(rule: nn.Module, state: InnerState) -> InnerState:
    """One meta-training inner step with its meta-gradient (lookahead, same batch, window 1)."""
    result = unroll(rule, state.detached(), 1, "lookahead", "same")
    result.meta_loss.backward()
    return result.state


def inner_step_times(preset: str, repeats: int, names: tuple[str, ...] = tuple(RULES),
                     ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds of each rule's inner steps, one of each per round after a warm-up step, and its minor page faults
    per step."""
    spec = TaskSpec(preset=preset, horizon=1000)
    rules = {name: RULES[name]() for name in names}
    states = {}
    for name, rule in rules.items():  # warm-up
        with kernels_for(name):
            states[name] = inner_step(rule, InnerState.start(spec, rule))
    times: dict[str, list[float]] = {name: [] for name in rules}
    faults = dict.fromkeys(rules, 0)
    for _ in range(repeats):
        for name, rule in rules.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            with kernels_for(name):
                start = time.perf_counter()
                states[name] = inner_step(rule, states[name])
                times[name].append(time.perf_counter() - start)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return times, {name: count / repeats for name, count in faults.items()}


def peak_memory_child(name: str, preset: str, steps: int) -> None:
    torch.set_num_threads(1)
    rule = RULES[name]()
    state = InnerState.start(TaskSpec(preset=preset, horizon=1000), rule)
    baseline = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from the current RSS
    with kernels_for(name):
        for _ in range(steps):
            state = inner_step(rule, state)
    print(json.dumps({"baseline_mib": baseline, "added_mib": _status_mib("VmHWM") - baseline}))


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


def peak_memory(name: str, preset: str, steps: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--memory-child", name, preset, str(steps)], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def deployed_step_times(repeats: int) -> tuple[int, dict[str, list[float]]]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {"torch.optim.Adam": torch.optim.Adam(model.parameters(), lr=1e-3),
                  "ff": LearnedOptimizer(model, FFMetaOptimizer()), "pna": LearnedOptimizer(model, PNAMetaOptimizer()),
                  EAGER_PNA: LearnedOptimizer(model, PNAMetaOptimizer())}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for i in range(repeats + 1):
        for name, optimizer in optimizers.items():
            with kernels_for(name):
                start = time.perf_counter()
                optimizer.step(0.0) if isinstance(optimizer, LearnedOptimizer) else optimizer.step()
                if i:
                    times[name].append(time.perf_counter() - start)
    return sum(p.numel() for p in model.parameters()), times


def rule_gflops(repeats: int) -> dict[str, tuple[float, list[float]]]:
    """GFLOP of each rule's forward + backward (features -> outputs) on task 17, and its times. The FLOPs are
    counted with the layers through ``F.linear`` (the counter does not see oneDNN's kernel; the arithmetic is
    the same), the times taken on the default path."""
    state = InnerState.start(TaskSpec(preset="17"), RULES["ff"]())
    space, n = state.task.space, state.task.space.numel
    features = torch.randn(n, 14)
    results = {}
    for name, cls in RULES.items():
        rule = cls()

        def run(rule=rule, name=name) -> None:
            with kernels_for(name):
                outputs, _ = rule.network_step(features, {}, space)
                outputs.sum().backward()

        run()
        with onednn(False), FlopCounterMode(display=False) as counter:
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        results[name] = (counter.get_total_flops() / 1e9, times)
    return results


def conv_layer_times(repeats: int) -> dict[str, list[float]]:
    """One message-passing layer (hid 64) on task 17's graph, forward + backward: through the compiled kernel, and
    in eager mode by segment and by scatter."""
    graph = InnerState.start(TaskSpec(preset="17"), RULES["ff"]()).task.space.require_graph("pna_speed")
    conv = PNAMetaOptimizer().network.convs[0]
    edge_index, ptr = graph.bidirectional_edge_index, graph.bidirectional_ptr
    x, edge_attr = torch.randn(graph.num_nodes, 64), torch.randn(edge_index.shape[1], 64)
    def run(target_ptr: torch.Tensor | None, compiled: bool) -> None:
        with fused_kernels(compiled):
            conv(x.clone().requires_grad_(), edge_index, edge_attr.clone().requires_grad_(),
                 target_ptr=target_ptr).sum().backward()

    return interleaved({"compiled kernel": lambda: run(ptr, True),
                        "eager, max / min by segment": lambda: run(ptr, False),
                        "eager, max / min by scatter": lambda: run(None, False)}, repeats)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--wide-repeats", type=int, default=3)
    parser.add_argument("--deploy-repeats", type=int, default=2, help="PNA's step on the 1.07M MLP takes minutes")
    parser.add_argument("--memory-child", nargs=3, metavar=("RULE", "PRESET", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--inner-steps-of", nargs="+", choices=list(RULES), metavar="RULE",
                        help=f"only the inner-step and memory tables, for these rules ({', '.join(RULES)}; ff first)")
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    keep_freed_memory()  # as `python -m lightning_l2o fit` does
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.memory_child:
        name, preset, steps = args.memory_child
        return peak_memory_child(name, preset, int(steps))
    lines = [f"torch {torch.__version__}, 1 CPU thread; times in ms as min / median", "",
             "| meta-training inner step | rule | ms | × FF (median) | added peak RSS (MiB) |", "|---|---|---|---|---|"]
    names = tuple(args.inner_steps_of or RULES)
    if names[0] != "ff":
        parser.error("--inner-steps-of: put ff first, the rule the others are timed against")
    for preset in TASKS:
        times, _ = inner_step_times(preset, args.repeats if preset == "17" else args.wide_repeats, names)
        ff = statistics.median(times["ff"])
        for name, t in times.items():
            memory = peak_memory(name, preset, 3)
            lines.append(f"| {preset} | {name} | {min_median_ms(t)} | {statistics.median(t) / ff:.2f} | "
                         f"{memory['added_mib']:.0f} |")
            print(lines[-1], flush=True)
    if args.inner_steps_of:
        save_report(lines, "pna_speed_inner_steps.md")
        return
    n, times = deployed_step_times(args.deploy_repeats)
    adam = statistics.median(times["torch.optim.Adam"])
    lines += ["", f"| deployed step, MLP with {n:,} parameters | ms | × Adam (median) |", "|---|---|---|"]
    lines += [f"| {name} | {min_median_ms(t)} | {statistics.median(t) / adam:.0f} |" for name, t in times.items()]
    rates = matmul_gflops(args.repeats)
    peak = max(rates.values())
    kernels = ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items())
    lines += ["", (f"| rule forward + backward on task 17 | GFLOP | ms | GFLOP/s (best) | of fp32 matmul "
                   f"({peak:.0f} GFLOP/s; {kernels}) |"), "|---|---|---|---|---|"]
    for name, (gflop, t) in rule_gflops(args.repeats).items():
        rate = gflop / min(t)
        lines.append(f"| {name} | {gflop:.2f} | {min_median_ms(t)} | {rate:.1f} | {100 * rate / peak:.0f} % |")
    times = conv_layer_times(5 * args.repeats)
    lines += ["", "| one FiLMPNAConv layer on task 17, forward + backward | ms |", "|---|---|"]
    lines += [f"| {name} | {min_median_ms(t)} |" for name, t in times.items()]
    save_report(lines, "pna_speed.md")


if __name__ == "__main__":
    main()
