"""Tables, CSV files and figures of meta-test trajectories, and their paired statistics against a reference."""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from lightning_l2o.evaluation import Trajectory, log10_loss, summarize

EXACT_T_MAX_DF = 200
"""Degrees of freedom up to which :func:`t_quantile` inverts the exact distribution function."""


def result_rows(trajectories: Iterable[Trajectory]) -> list[dict[str, Any]]:
    """One row per run, i.e. per (task, method, meta-seed): lr, divergence and final metrics."""
    return [
        {"task": t.spec.name, "family": t.spec.family, "architecture": t.spec.architecture, "seed": t.spec.seed,
         "method": t.method, "meta_seed": t.meta_seed, "lr": t.lr, "diverged": t.diverged, "steps": len(t.losses),
         **t.final}
        for t in trajectories
    ]


def curve_rows(trajectories: Iterable[Trajectory]) -> list[dict[str, Any]]:
    """Long format: one row per (task, method, meta-seed, inner step) with the training loss."""
    return [
        {"task": t.spec.name, "family": t.spec.family, "method": t.method, "meta_seed": t.meta_seed, "lr": t.lr,
         "step": step, "loss": loss}
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


def method_rows(trajectories: Iterable[Trajectory]) -> list[dict[str, Any]]:
    """Per (architecture, method): :func:`~lightning_l2o.evaluation.summarize`'s row (mean ± std over test seeds)
    and ``meta_seeds``; for a method with several meta-training seeds, mean ± std over them of its per-meta-seed
    means (std with ddof 0, as over test seeds; runs and diverged runs summed)."""
    by_meta_seed: dict[int | None, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        by_meta_seed[t.meta_seed].append(t)
    per_meta_seed: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for group in by_meta_seed.values():
        for row in summarize(group):
            per_meta_seed[(row["architecture"], row["method"])].append(row)
    rows = []
    for (architecture, method), seed_rows in sorted(per_meta_seed.items()):
        row = {**seed_rows[0], "meta_seeds": len(seed_rows)}
        if len(seed_rows) > 1:
            row.update(lr="/".join(dict.fromkeys(r["lr"] for r in seed_rows)),
                       runs=sum(r["runs"] for r in seed_rows), diverged=sum(r["diverged"] for r in seed_rows))
            for metric in ("final_loss", "test_accuracy"):
                row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(r[f"{metric}_mean"] for r in seed_rows)
        rows.append(row)
    return rows


def markdown_table(trajectories: Iterable[Trajectory]) -> str:
    """Final training loss and test accuracy per architecture and method (:func:`method_rows`): mean ± std over
    test seeds, or over meta-training seeds for a method given several."""
    lines = ["| task | method | lr | final train loss | test accuracy (%) | ± std over | diverged |",
             "|---|---|---|---|---|---|---|"]
    for row in method_rows(trajectories):
        acc = row["test_accuracy_mean"]
        acc_text = f"{100 * acc:.1f} ± {100 * row['test_accuracy_std']:.1f}" if math.isfinite(acc) else "—"
        spread = "test seeds" if row["meta_seeds"] == 1 else f"{row['meta_seeds']} meta-seeds"
        lines.append(
            f"| {row['architecture']} | {row['method']} | {row['lr']} | {row['final_loss_mean']:.4g} ± "
            f"{row['final_loss_std']:.2g} | {acc_text} | {spread} | {row['diverged']}/{row['runs']} |"
        )
    return "\n".join(lines)


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` of Student's t distribution with ``df`` degrees of freedom (``t_quantile(0.975, 4)`` is 2.776).

    Exact to rounding for ``df <= EXACT_T_MAX_DF``: bisection on the closed-form distribution function of an
    integer ``df`` (Abramowitz & Stegun 26.7.3-4). Above, the Cornish-Fisher expansion in ``1/df`` to four terms
    (A&S 26.7.5), within 1e-10 there.
    """
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1; got p={p}, df={df}")
    if df > EXACT_T_MAX_DF:
        z = statistics.NormalDist().inv_cdf(p)
        terms = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
                 (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
        return z + sum(g / df**k for k, g in enumerate(terms, 1))
    target, lo, hi = abs(2 * p - 1), 0.0, math.pi / 2
    for _ in range(64):  # in theta = atan(t / sqrt(df)): the bracket [0, pi/2) covers every t >= 0
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central_probability(mid, df) < target else (lo, mid)
    return math.copysign(math.sqrt(df) * math.tan((lo + hi) / 2), p - 0.5)


def _t_central_probability(theta: float, df: int) -> float:
    """``P(|T| <= sqrt(df) tan(theta))`` for ``T`` Student-t with integer ``df`` (A&S 26.7.3-4)."""
    c2 = math.cos(theta) ** 2
    if df % 2:
        term = math.cos(theta)
        total = term if df > 1 else 0.0
        for j in range(2, df - 1, 2):
            term *= c2 * j / (j + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = total = 1.0
    for j in range(1, df - 2, 2):
        term *= c2 * j / (j + 1)
        total += term
    return math.sin(theta) * total


@dataclass(frozen=True)
class Paired:
    """Paired comparison ours − reference over the ``n`` pairs where both values are finite (the others excluded).

    ``ours`` and ``reference`` are the two means over those pairs, ``mean`` their mean difference and
    ``[low, high]`` its confidence interval (Student t with ``n - 1`` dof; NaN for ``n < 2``). ``wins`` /
    ``losses`` / ``ties`` count pairs that favour ours / the reference / neither. ``verdict``: "better" or
    "worse" only when the interval lies entirely on ours' / the reference's side of 0, "tie" otherwise,
    "n/a" without an interval.
    """

    n: int
    ours: float
    reference: float
    mean: float
    low: float
    high: float
    wins: int
    losses: int
    ties: int
    verdict: str


def paired(ours: Sequence[float], reference: Sequence[float], higher_is_better: bool = True,
           level: float = 0.95) -> Paired:
    """:class:`Paired` statistics of ``ours[i] - reference[i]`` with a ``level`` confidence interval;
    ``higher_is_better`` orients wins and verdicts."""
    pairs = [(a, b) for a, b in zip(ours, reference, strict=True) if math.isfinite(a - b)]
    n = len(pairs)
    diffs = [a - b for a, b in pairs]
    sign = 1 if higher_is_better else -1
    wins, losses = sum(sign * d > 0 for d in diffs), sum(sign * d < 0 for d in diffs)
    mean = statistics.fmean(diffs) if n else math.nan
    half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.nan
    low, high = mean - half, mean + half
    verdict = ("n/a" if n < 2 else "better" if sign * low > 0 and sign * high > 0
               else "worse" if sign * low < 0 and sign * high < 0 else "tie")
    return Paired(n, statistics.fmean(a for a, _ in pairs) if n else math.nan,
                  statistics.fmean(b for _, b in pairs) if n else math.nan,
                  mean, low, high, wins, losses, n - wins - losses, verdict)


PAIRED_METRICS = ("accuracy_pct", "log10_loss")
"""The metrics of :func:`paired_rows`: test accuracy in percent (differences in percentage points, higher is
better) and log10 of the final training loss (lower is better; a difference of -0.1 is a 21 % lower loss)."""


def paired_rows(trajectories: Iterable[Trajectory], reference: str, learned: Sequence[str]) -> list[dict[str, Any]]:
    """Each learned method against ``reference`` on the same test tasks (same preset and seed), per architecture.

    One row per meta-seed (``meta_seed``: the checkpoint's index, ``None`` for a single checkpoint) with, per
    metric ``m`` of :data:`PAIRED_METRICS`, the :class:`Paired` fields as ``m`` (ours' mean), ``reference_m``,
    ``m_diff``, ``m_ci_low``, ``m_ci_high`` (95 %), ``m_wins``, ``m_losses``, ``m_ties``, ``m_verdict``. Runs
    that diverged are counted in ``diverged`` / ``reference_diverged`` and their pairs left out (``pairs``: the
    rest). A method with several meta-seeds gets one more row, ``meta_seed`` "all": mean and std (``m_std``,
    ``m_diff_std``, ddof 0) over its meta-seeds of their mean and mean difference, counts summed, and as verdict
    how many meta-seeds got each.
    """
    trajectories = list(trajectories)
    references = {t.spec.name: t for t in trajectories if t.method == reference}
    groups: dict[tuple[str, str], dict[int | None, list[tuple[Trajectory, Trajectory]]]] = defaultdict(
        lambda: defaultdict(list))
    for t in trajectories:
        if t.method in learned and t.spec.name in references:
            groups[(t.spec.architecture, t.method)][t.meta_seed].append((t, references[t.spec.name]))
    rows = []
    for (architecture, method), by_meta_seed in sorted(groups.items()):
        seed_rows = [_paired_row(architecture, method, reference, meta_seed, pairs)
                     for meta_seed, pairs in by_meta_seed.items()]
        rows += seed_rows + ([_over_meta_seeds(seed_rows)] if len(seed_rows) > 1 else [])
    return rows


def _paired_row(architecture: str, method: str, reference: str, meta_seed: int | None,
                pairs: Sequence[tuple[Trajectory, Trajectory]]) -> dict[str, Any]:
    ours, theirs = [a for a, _ in pairs], [b for _, b in pairs]
    stats = {
        "accuracy_pct": paired([_accuracy_pct(t) for t in ours], [_accuracy_pct(t) for t in theirs]),
        "log10_loss": paired([log10_loss(t.final_loss) for t in ours], [log10_loss(t.final_loss) for t in theirs],
                             higher_is_better=False),
    }
    row = {"architecture": architecture, "method": method, "meta_seed": meta_seed, "meta_seeds": 1,
           "reference": reference, "pairs": stats["log10_loss"].n, "diverged": sum(t.diverged for t in ours),
           "reference_diverged": sum(t.diverged for t in theirs)}
    for m, s in stats.items():
        row.update({m: s.ours, f"{m}_std": math.nan, f"reference_{m}": s.reference, f"{m}_diff": s.mean,
                    f"{m}_diff_std": math.nan, f"{m}_ci_low": s.low, f"{m}_ci_high": s.high, f"{m}_wins": s.wins,
                    f"{m}_losses": s.losses, f"{m}_ties": s.ties, f"{m}_verdict": s.verdict})
    return row


def _over_meta_seeds(seed_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    counts = ["pairs", "diverged", "reference_diverged"] + [f"{m}_{c}" for m in PAIRED_METRICS
                                                           for c in ("wins", "losses", "ties")]
    row = {**seed_rows[0], "meta_seed": "all", "meta_seeds": len(seed_rows),
           **{key: sum(r[key] for r in seed_rows) for key in counts}}
    for m in PAIRED_METRICS:
        row[m], row[f"{m}_std"] = _mean_std(r[m] for r in seed_rows)
        row[f"reference_{m}"] = _mean_std(r[f"reference_{m}"] for r in seed_rows)[0]
        row[f"{m}_diff"], row[f"{m}_diff_std"] = _mean_std(r[f"{m}_diff"] for r in seed_rows)
        row[f"{m}_ci_low"] = row[f"{m}_ci_high"] = math.nan
        tally = Counter(r[f"{m}_verdict"] for r in seed_rows)
        row[f"{m}_verdict"] = ", ".join(f"{verdict} {count}" for verdict, count in sorted(tally.items()))
    return row


def paired_table(rows: Sequence[dict[str, Any]], reference: str) -> str:
    """Markdown of :func:`paired_rows`, after a caption that states the statistics."""
    caption = (
        f"Paired against {reference} on the same test tasks and seeds: Δ = ours − {reference} over the pairs in "
        f"which neither run diverged (diverged runs are counted in the last column, their pairs left out). "
        f"[95 % CI]: Student t with pairs − 1 dof. Verdict \"better\" / \"worse\" only when the CI lies entirely "
        f"on ours' / {reference}'s side of 0 (higher accuracy, lower loss), else \"tie\"; \"n/a\" under 2 pairs. "
        f"W/L/T: pairs won / lost / tied. Rows \"mean ± std of k\": over k meta-training seeds, of their "
        f"per-meta-seed means; counts summed; verdict: how many meta-seeds got each."
    )
    header = (f"| task | method | meta-seed | pairs | test accuracy (%): ours / {reference} | Δ test accuracy (pp) "
              f"[95 % CI] | W/L/T | verdict | Δ log10 final train loss [95 % CI] | W/L/T | verdict | diverged: "
              f"ours / {reference} |")
    lines = [caption, "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        aggregate = row["meta_seeds"] > 1
        cells = [row["architecture"], row["method"],
                 f"mean ± std of {row['meta_seeds']}" if aggregate else _or_dash(row["meta_seed"]), row["pairs"],
                 _accuracies_text(row, aggregate)]
        for m, digits in (("accuracy_pct", 1), ("log10_loss", 3)):
            cells += [_difference_text(row, m, digits, aggregate),
                      f"{row[f'{m}_wins']}/{row[f'{m}_losses']}/{row[f'{m}_ties']}", row[f"{m}_verdict"]]
        cells.append(f"{row['diverged']} / {row['reference_diverged']}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _or_dash(value: Any) -> Any:
    return "—" if value is None else value


def _accuracies_text(row: dict[str, Any], aggregate: bool) -> str:
    ours, theirs = row["accuracy_pct"], row["reference_accuracy_pct"]
    if not math.isfinite(ours):
        return "—"
    spread = f" ± {row['accuracy_pct_std']:.1f}" if aggregate else ""
    return f"{ours:.1f}{spread} / {theirs:.1f}"


def _difference_text(row: dict[str, Any], metric: str, digits: int, aggregate: bool) -> str:
    diff, low, high = row[f"{metric}_diff"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    if not math.isfinite(diff):
        return "—"
    if aggregate:
        return f"{diff:+.{digits}f} ± {row[f'{metric}_diff_std']:.{digits}f}"
    interval = f" [{low:+.{digits}f}, {high:+.{digits}f}]" if math.isfinite(low) else ""
    return f"{diff:+.{digits}f}{interval}"


def _accuracy_pct(t: Trajectory) -> float:
    return math.nan if t.diverged else 100 * t.final["test_accuracy"]


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and std (ddof 0) of the finite ``values``; NaN for none."""
    finite = [v for v in values if math.isfinite(v)]
    return (statistics.fmean(finite), statistics.pstdev(finite)) if finite else (math.nan, math.nan)


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
