"""Meta-training inner steps with glibc's malloc as it comes and with freed memory kept (``keep_freed_memory``).

    L2O_DATA_DIR=../shared/data python benchmarks/allocator.py [--repeats 25]

Each setting runs in a fresh process (``mallopt`` cannot be undone): FF and PNA inner steps on task 17 (the
reference's one-step lookahead, as ``benchmarks/pna_speed.py`` times them), alternating, one CPU thread; min / median
ms and minor page faults per step after a warm-up step each. Appends to ``benchmarks/results/allocator.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pna_speed import inner_step_times
from results_table import save_report

from lightning_l2o.allocator import keep_freed_memory

SETTINGS = ("glibc defaults", "freed memory kept")


def child(setting: str, repeats: int) -> None:
    if setting == SETTINGS[1]:
        keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    times, faults = inner_step_times("17", repeats, ("ff", "pna"))
    print(json.dumps({name: {"min": min(t), "median": statistics.median(t), "faults": faults[name]}
                      for name, t in times.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    if args.child:
        return child(args.child, args.repeats)
    lines = [(f"task 17, one CPU thread, {args.repeats} inner steps of each rule, alternating; load average "
              f"{os.getloadavg()[0]:.1f} at the start"), "",
             "| malloc | FF ms (min / median) | PNA ms (min / median) | PNA / FF (median) | page faults per step: FF / PNA |",
             "|---|---|---|---|---|"]
    for setting in SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--child", setting, "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        result = json.loads(out.stdout.strip().splitlines()[-1])
        ff, pna = result["ff"], result["pna"]
        lines.append(f"| {setting} | {1e3 * ff['min']:.1f} / {1e3 * ff['median']:.1f} | {1e3 * pna['min']:.1f} / "
                     f"{1e3 * pna['median']:.1f} | {pna['median'] / ff['median']:.2f}× | {ff['faults']:.0f} / "
                     f"{pna['faults']:.0f} |")
    save_report(lines, "allocator.md", append=True)


if __name__ == "__main__":
    main()
