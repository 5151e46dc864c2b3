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

import yaml
from results_table import save_report

REPO = Path(__file__).resolve().parents[1]


def segment_shape(config: Path) -> tuple[int, int]:
    """``(inner steps per segment, segments per task)`` of the config's first training task."""
    data = yaml.safe_load(config.read_text())["data"]["init_args"]
    horizon = data["train_tasks"][0].get("horizon", 100)
    length = data.get("unroll_length") or horizon
    return length, -(-horizon // length)


def fit_seconds(config: Path, ranks: int, outer_steps: int) -> float:
    """Wall time of a ``fit`` of ``outer_steps`` outer steps on ``ranks`` processes."""
    with tempfile.TemporaryDirectory() as root:
        args = [sys.executable, "-m", "lightning_l2o", "fit", "--config", str(config),
                f"--trainer.max_steps={outer_steps}", "--trainer.limit_val_batches=0", "--trainer.accelerator=cpu",
                f"--trainer.devices={ranks}", f"--trainer.strategy={'ddp' if ranks > 1 else 'auto'}",
                "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"]
        start = time.perf_counter()
        subprocess.run(args, cwd=REPO, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs/opt2vec.yaml")
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--long", type=int, default=1100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    inner_steps, segments_per_task = segment_shape(args.config)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for ranks, values in rates.items():
            seconds = fit_seconds(args.config, ranks, args.long) - fit_seconds(args.config, ranks, args.short)
            values.append((args.long - args.short) * ranks / seconds)
            print(f"{ranks} rank(s): {values[-1]:.1f} segments/s", flush=True)
    title = (f"fit --config {args.config.name}, {args.long} - {args.short} outer steps, 1 intra-op thread per rank, "
             f"{args.repeats} interleaved repeats (min / median)")
    header = (f"| ranks | tasks ({inner_steps * segments_per_task} inner steps) per second | segments ({inner_steps} "
              f"inner steps) per second | inner steps per second | speed-up (median) |")
    lines = [title, "", header, "|---|---|---|---|---|"]
    base = statistics.median(rates[1])
    for ranks, values in rates.items():
        low, mid = min(values), statistics.median(values)
        lines.append(f"| {ranks} | {low / segments_per_task:.2f} / {mid / segments_per_task:.2f} | {low:.2f} / "
                     f"{mid:.2f} | {low * inner_steps:.0f} / {mid * inner_steps:.0f} | {mid / base:.2f} |")
    save_report(lines, "ddp_throughput.md", append=True)


if __name__ == "__main__":
    main()
