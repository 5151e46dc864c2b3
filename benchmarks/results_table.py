"""Where the benchmark scripts put their Markdown results: printed, and written under ``benchmarks/results``."""

from __future__ import annotations

import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save_report(lines: list[str], name: str, append: bool = False) -> Path:
    """Print ``lines`` and write them to ``benchmarks/results/<name>`` (after what is there, with ``append``)."""
    report = "\n".join(lines) + "\n"
    print(report, end="")
    out = RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a" if append else "w") as f:
        f.write(report + ("\n" if append else ""))
    return out


def min_median_ms(seconds: list[float], digits: int = 1) -> str:
    """``"min / median"`` of timings in seconds, in milliseconds with ``digits`` decimals."""
    return f"{1e3 * min(seconds):.{digits}f} / {1e3 * statistics.median(seconds):.{digits}f}"
