"""Memory: peak RSS of ``fit`` against the process's baseline after its imports, so that the meta-training's own
memory is visible.

    python benchmarks/memory.py                                  # the default: configs/opt2vec.yaml as shipped
    python benchmarks/memory.py --config configs/ff.yaml --args --trainer.max_steps=5

Each figure is the peak resident set size (``ru_maxrss``) of a fresh child process: ``import torch``, the imports
of a ``fit`` (``lightning_l2o.cli`` and the modules the configs' class paths load: ``datamodules``, ``callbacks``,
TensorBoard), and ``python -m lightning_l2o fit --config <config>`` as shipped
(validation, checkpoints, TensorBoard and callbacks included; its run folder in a temporary directory).
Appends to ``benchmarks/results/memory.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from results_table import save_report

IMPORTS = "import lightning_l2o.cli, datamodules, callbacks, torch.utils.tensorboard"


def peak_rss_mib(command: list[str]) -> float:
    """Peak resident set size of ``command`` run from the repository root, in MiB."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/opt2vec.yaml")
    parser.add_argument("--args", nargs=argparse.REMAINDER, default=[], help="further options of the fit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        fit = [sys.executable, "-m", "lightning_l2o", "fit", f"--config={args.config}", "--trainer.enable_progress_bar=false",
               f"--trainer.default_root_dir={root}", *args.args]
        figures = {
            "python": peak_rss_mib([sys.executable, "-c", "pass"]),
            "import torch": peak_rss_mib([sys.executable, "-c", "import torch"]),
            "import lightning_l2o.cli": peak_rss_mib([sys.executable, "-c", "import lightning_l2o.cli"]),
            "imports of a fit": peak_rss_mib([sys.executable, "-c", IMPORTS]),
            " ".join(["fit", args.config, *args.args]): peak_rss_mib(fit),
        }
    baseline = figures["imports of a fit"]
    lines = [f"### {datetime.now():%Y-%m-%d %H:%M}: peak RSS, 1 thread", "",
             "| process | peak RSS (MiB) | over the imports' baseline (MiB) |", "|---|---|---|"]
    lines += [f"| {name} | {mib:.0f} | {mib - baseline:+.0f} |" for name, mib in figures.items()]
    save_report(lines, "memory.md", append=True)


if __name__ == "__main__":
    main()
