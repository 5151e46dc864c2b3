"""Meta-training throughput with 1 and 2 DDP ranks (gloo, CPU): tasks and inner steps per second.

    python benchmarks/ddp_throughput.py

Runs ``python -m lightning_l2o fit --config configs/opt2vec.yaml`` (K = 10 inner steps per outer step on its
quadratics, regressions and digits MLPs; no validation) with ``--trainer.devices`` 1 and 2, one intra-op thread per
rank, for ``--short`` and ``--long`` outer steps; the difference of the two wall times removes start-up (imports,
process launch, gloo set-up). Each rank meta-trains on its own segments, so one outer step with R ranks consumes R
segments (a task of 100 inner steps is 10 segments). Repeats are interleaved; min / median are reported. Writes ``benchmarks/results/ddp_throughput.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INNER_STEPS_PER_SEGMENT = 10  # configs/opt2vec.yaml's unroll_length
SEGMENTS_PER_TASK = 10  # its horizon of 100 inner steps


def fit_seconds(ranks: int, outer_steps: int) -> float:
    """Wall time of a ``fit`` of ``outer_steps`` outer steps on ``ranks`` processes."""
    with tempfile.TemporaryDirectory() as root:
        args = [sys.executable, "-m", "lightning_l2o", "fit", "--config", str(REPO / "configs/opt2vec.yaml"),
                f"--trainer.max_steps={outer_steps}", "--trainer.limit_val_batches=0", "--trainer.accelerator=cpu",
                f"--trainer.devices={ranks}", f"--trainer.strategy={'ddp' if ranks > 1 else 'auto'}",
                "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"]
        start = time.perf_counter()
        subprocess.run(args, cwd=REPO, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--long", type=int, default=1100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for ranks, values in rates.items():
            seconds = fit_seconds(ranks, args.long) - fit_seconds(ranks, args.short)
            values.append((args.long - args.short) * ranks / seconds)
            print(f"{ranks} rank(s): {values[-1]:.1f} segments/s", flush=True)
    title = (f"fit --config configs/opt2vec.yaml, {args.long} - {args.short} outer steps, 1 intra-op thread per rank, "
             f"{args.repeats} interleaved repeats (min / median)")
    header = ("| ranks | tasks (100 inner steps) per second | segments (10 inner steps) per second | "
              "inner steps per second | speed-up (median) |")
    lines = [title, "", header, "|---|---|---|---|---|"]
    base = statistics.median(rates[1])
    for ranks, values in rates.items():
        low, mid = min(values), statistics.median(values)
        lines.append(f"| {ranks} | {low / SEGMENTS_PER_TASK:.2f} / {mid / SEGMENTS_PER_TASK:.2f} | {low:.1f} / "
                     f"{mid:.1f} | {low * INNER_STEPS_PER_SEGMENT:.0f} / {mid * INNER_STEPS_PER_SEGMENT:.0f} | "
                     f"{mid / base:.2f} |")
    out = REPO / "benchmarks" / "results" / "ddp_throughput.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
