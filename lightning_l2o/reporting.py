"""Tables, CSV files and figures of meta-test trajectories."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from lightning_l2o.evaluation import Trajectory, summarize


def result_rows(trajectories: Iterable[Trajectory]) -> list[dict[str, Any]]:
    """One row per (task, method): lr, divergence and final metrics."""
    return [
        {"task": t.spec.name, "family": t.spec.family, "architecture": t.spec.architecture, "seed": t.spec.seed,
         "method": t.method, "lr": t.lr, "diverged": t.diverged, "steps": len(t.losses), **t.final}
        for t in trajectories
    ]


def curve_rows(trajectories: Iterable[Trajectory]) -> list[dict[str, Any]]:
    """Long format: one row per (task, method, inner step) with the training loss."""
    return [
        {"task": t.spec.name, "family": t.spec.family, "method": t.method, "lr": t.lr, "step": step, "loss": loss}
        for t in trajectories
        for step, loss in enumerate(t.losses.tolist())
    ]


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def markdown_table(trajectories: Iterable[Trajectory]) -> str:
    """Final training loss and test accuracy per architecture and method, mean ± std over tasks."""
    lines = ["| task | method | lr | final train loss | test accuracy (%) | diverged |",
             "|---|---|---|---|---|---|"]
    for row in summarize(trajectories):
        acc = row["test_accuracy_mean"]
        acc_text = f"{100 * acc:.1f} ± {100 * row['test_accuracy_std']:.1f}" if math.isfinite(acc) else "—"
        lines.append(
            f"| {row['architecture']} | {row['method']} | {row['lr']} | {row['final_loss_mean']:.4g} ± "
            f"{row['final_loss_std']:.2g} | {acc_text} | {row['diverged']}/{row['runs']} |"
        )
    return "\n".join(lines)


def versus_table(trajectories: Iterable[Trajectory], reference: str, learned: Sequence[str]) -> str:
    """Each learned method against ``reference`` per architecture: test-accuracy difference (percentage points,
    ± the two standard deviations combined) and final-loss ratio; "better" only if the accuracy gain exceeds
    that spread (for tasks without accuracy: the loss ratio below 1)."""
    rows = {(r["architecture"], r["method"]): r for r in summarize(trajectories)}
    lines = [f"| task | method | Δ test accuracy vs {reference} (pp) | final loss / {reference}'s | verdict |",
             "|---|---|---|---|---|"]
    for architecture, method in sorted(k for k in rows if k[1] in learned):
        ours, ref = rows[(architecture, method)], rows.get((architecture, reference))
        if ref is None:
            continue
        delta = 100 * (ours["test_accuracy_mean"] - ref["test_accuracy_mean"])
        spread = 100 * math.hypot(ours["test_accuracy_std"], ref["test_accuracy_std"])
        ratio = ours["final_loss_mean"] / ref["final_loss_mean"]
        if ours["diverged"]:
            verdict = f"diverged {ours['diverged']}/{ours['runs']}"
        elif math.isfinite(delta):
            verdict = "better" if delta > spread else "worse" if delta < -spread else "tie"
        else:
            verdict = "better" if ratio < 1 else "worse"
        delta_text = f"{delta:+.1f} ± {spread:.1f}" if math.isfinite(delta) else "—"
        lines.append(f"| {architecture} | {method} | {delta_text} | {ratio:.3g} | {verdict} |")
    return "\n".join(lines)


def _padded(series: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack 1-D series of different lengths, padding with NaN: ``(num_series, max_len)``."""
    out = torch.full((len(series), max(len(s) for s in series)), math.nan)
    for i, s in enumerate(series):
        out[i, : len(s)] = s.float()
    return out


def _grouped(trajectories: Iterable[Trajectory]) -> dict[str, dict[str, list[Trajectory]]]:
    groups: dict[str, dict[str, list[Trajectory]]] = defaultdict(lambda: defaultdict(list))
    for t in trajectories:
        groups[t.spec.architecture][t.method].append(t)
    return groups


def _subplots(count: int, rows: int = 1) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(rows, count, figsize=(4.2 * count, 3.4 * rows), squeeze=False)
    return fig, axes


def plot_loss_curves(trajectories: Iterable[Trajectory]) -> Figure:
    """One panel per task architecture: geometric-mean training loss per method over inner steps, min-max band."""
    groups = _grouped(trajectories)
    fig, axes = _subplots(max(len(groups), 1))
    for ax, (architecture, methods) in zip(axes[0], sorted(groups.items())):
        for method, trajs in sorted(methods.items()):
            logs = _padded([t.losses.clamp_min(1e-12).log10() for t in trajs])
            steps = torch.arange(logs.shape[1])
            mean = torch.nanmean(logs, 0)
            label = f"{method} (lr {trajs[0].lr:g})"
            ax.plot(steps, 10**mean, label=label)
            lo, hi = _nan_min_max(logs)
            ax.fill_between(steps, 10**lo, 10**hi, alpha=0.15)
        ax.set(title=architecture, xlabel="inner step", ylabel="training loss", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_traces(trajectories: Iterable[Trajectory], keys: Sequence[str]) -> Figure | None:
    """Rows: info keys (e.g. ``lr_scale``, ``momentum``); columns: task architectures; mean trace over tasks per step."""
    with_info = [t for t in trajectories if all(k in t.infos for k in keys)]
    if not with_info or not keys:
        return None
    groups = _grouped(with_info)
    fig, axes = _subplots(len(groups), rows=len(keys))
    for col, (architecture, methods) in enumerate(sorted(groups.items())):
        for row, key in enumerate(keys):
            ax = axes[row][col]
            for method, trajs in sorted(methods.items()):
                values = _padded([t.infos[key].reshape(len(t.infos[key]), -1).mean(1) for t in trajs])
                ax.plot(torch.nanmean(values, 0), label=method)
            ax.set(title=f"{architecture}: {key}", xlabel="inner step")
    fig.tight_layout()
    return fig


def _nan_min_max(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    filled_hi = torch.where(torch.isnan(x), torch.full_like(x, -math.inf), x)
    filled_lo = torch.where(torch.isnan(x), torch.full_like(x, math.inf), x)
    return filled_lo.min(0).values, filled_hi.max(0).values


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
