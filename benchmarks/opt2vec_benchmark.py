"""Meta-train Opt2Vec with the default config, then meta-test it against tuned Adam and SGD-momentum.

    python benchmarks/opt2vec_benchmark.py [--config configs/opt2vec.yaml] [--out benchmarks/results/opt2vec]

Runs ``fit`` and ``test`` through the CLI as subprocesses (so wall time and peak RSS are those of a
user's run), then prints a Markdown table: per held-out task architecture and method, the final
full-data training loss and test accuracy after T inner steps, mean ± std over the test seeds, with
each baseline at the lr chosen on the validation tasks of its family.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str]) -> tuple[float, float]:
    """Run ``command`` from the repository root; return (wall seconds, peak RSS of that process in MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return wall, usage.ru_maxrss / 1024


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_l2o", *args, "--trainer.enable_progress_bar=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/opt2vec.yaml")
    parser.add_argument("--out", default="benchmarks/results/opt2vec", help="run folder (logs and checkpoints)")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    common = [f"--config={args.config}", f"--trainer.logger.init_args.save_dir={out}"]

    _, floor = run([sys.executable, "-c", "import lightning_l2o.cli"])
    fit_wall, fit_rss = run(cli("fit", *common))
    last = max(out.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    test_wall, _ = run(cli("test", *common, f"--ckpt_path={last}"))
    table = max(out.rglob("test_step*_results.md"), key=lambda p: p.stat().st_mtime).read_text()

    report = (
        f"fit: {fit_wall / 60:.1f} min wall, peak RSS {fit_rss:.0f} MiB; importing the CLI alone peaks at "
        f"{floor:.0f} MiB (config {args.config}, checkpoint {last})\n"
        f"test: {test_wall:.0f} s wall\n\n{table}"
    )
    (out / "benchmark.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
