"""Replication benchmark: FF, LSTM and PNA meta-trained on task 17 (real FashionMNIST), evaluated against tuned baselines.

    python benchmarks/replication.py fit --outer-steps 300      # the methods in parallel, one CPU thread each
    python benchmarks/replication.py fit --methods pna --outer-steps 200
    python benchmarks/replication.py fit --methods ff_mixture --set model.init_args.outer_lr=0.003 --run lr3e-3
    python benchmarks/replication.py report                     # task 17 and width / depth presets
    python benchmarks/replication.py report --pretrained        # the same for the optimizers shipped in the package
    python benchmarks/replication.py generalization --reports NAME [NAME ...]   # paired differences across presets
    python benchmarks/replication.py baselines --report NAME    # every tuned baseline beside the learned methods

``fit`` runs ``python -m lightning_l2o fit --config configs/{ff,lstm,pna,pna_lstm,rt,nfn}.yaml`` with the reference schedule
(100 inner steps per outer step, one-step lookahead on the same batch, Adam 3e-4 with weight decay 1e-4,
cosine decay over ``--outer-steps``), with no validation or, with ``--val-every N``, validation on the config's
validation tasks (task 17, seeds 201-203, 1000 steps) every N outer steps keeping the best checkpoint; a killed run
resumes with ``--resume``. ``report`` runs :mod:`lightning_l2o.report` on each run's checkpoint chosen on
validation (its ``last.ckpt`` where it did not validate): baselines' lrs tuned on task 17's
validation seeds, then task 17 and the FashionMNIST width-8 and depth-1 presets (the wider and deeper ones cost
minutes per run on a CPU: add them with ``--presets``). Datasets are read from ``$L2O_DATA_DIR``
(default ``../shared/data``). Results go to ``benchmarks/results/replication/``; every report keeps its runs in
``benchmarks/results/replication/runs`` (one shared folder): a killed report resumes where it stopped, and a report
that adds a run folder to an earlier one's ``--runs`` only evaluates the new checkpoint; ``--cached-only`` (with
another ``--name``) writes a report from the runs made so far without running any. A report longer than a
session keeps its runs across checkouts when they are committed, a few KB each:
``git add -f benchmarks/results/replication/runs/*-<preset>_s*.pt``; and ``fit`` leaves each run's chosen checkpoint,
reduced to the rule, in ``benchmarks/results/replication/kept/<method>/<run>.ckpt`` (``keep`` writes it for runs
fitted before), which ``report`` reads where the run folder is absent: commit it too where it is under the repository's
2 MB limit for tracked files (a relational transformer's is 0.6 MB; a PNA-LSTM's, 4.2 MB, is not), as a fit with the
same seed reproduces the same weights on one machine, not across machines. As the package's code (not its comments or
docstrings) is part of every run's key, a later session resumes the report from a checkout with the package code the
runs were made with (README names the commit; a worktree at it once the code has changed). ``--pretrained`` evaluates the shipped
``<method>_fashion_mnist_task17`` optimizers instead of run folders. ``generalization`` gathers the
paired differences to tuned Adam of one or more reports (or of chosen methods and meta-seeds in them) into
``<--name>/generalization.{md,png}``: one row per preset, and test accuracy against width and against depth.
``baselines`` tabulates one report's tuned baselines (Adam, AdamW, SGD with momentum) beside its learned methods, with
each learned method's paired difference to each baseline, in ``<report>/baselines.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "replication"
MAX_TRACKED_MB = 2  # the largest file the repository tracks (the project's check before a stop flags larger ones)
METHODS = ("ff", "lstm", "pna")  # the defaults; ff_mixture and ff_adam_trajectory run when named
CONFIGS = (*METHODS, "pna_lstm", "rt", "nfn", "ff_mixture", "ff_adam_trajectory")
TEST_PRESETS = ("17", "fashion_mnist-width8", "fashion_mnist-depth1")
PRETRAINED = "{method}_fashion_mnist_task17"  # the shipped optimizers meta-trained on task 17
METRICS = {"accuracy_pct": ("Δ test accuracy (pp)", 1), "log10_loss": ("Δ log10 final train loss", 3)}  # label, decimals


def _env(threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env.setdefault("L2O_DATA_DIR", str(REPO.parent / "shared" / "data"))
    return env


def last_checkpoint(method: str, run: str) -> Path:
    """The ``last.ckpt`` of the method's run folder ``run``."""
    return OUT / method / run / "checkpoints" / "last.ckpt"


def chosen_checkpoint(method: str, run: str) -> Path:
    """The checkpoint of run ``run`` that was best on the validation tasks (the config's ``val/loss`` checkpoint,
    the one file beside ``last.ckpt``) where the run validated (``fit --val-every``), else its ``last.ckpt``."""
    last = last_checkpoint(method, run)
    best = [path for path in last.parent.glob("*.ckpt") if path.name != last.name]
    if len(best) > 1:
        raise SystemExit(f"{last.parent} holds several checkpoints besides last.ckpt: {best}; keep the val/loss one")
    return best[0] if best else last


def kept_checkpoint(method: str, run: str) -> Path:
    """Where :func:`keep` writes run ``run``'s chosen checkpoint, reduced to the rule."""
    return OUT / "kept" / method / f"{run}.ckpt"


def keep(method: str, run: str) -> Path:
    """Write run ``run``'s chosen checkpoint (:func:`chosen_checkpoint`) reduced to what evaluation reads (the rule's
    weights and settings: no optimizer state, no inner state) to :func:`kept_checkpoint`, so that a
    later checkout, which has no run folders, evaluates the same weights and finds their runs in the run cache."""
    import torch

    from lightning_l2o.checkpoints import CHECKPOINT_KEY, LIGHTNING_VERSION_KEY, WEIGHTS_PREFIX, read_checkpoint

    source = chosen_checkpoint(method, run)
    checkpoint = read_checkpoint(source)
    reduced = {LIGHTNING_VERSION_KEY: checkpoint[LIGHTNING_VERSION_KEY], "global_step": checkpoint["global_step"],
               "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(WEIGHTS_PREFIX)},
               CHECKPOINT_KEY: {"meta_optimizer": checkpoint[CHECKPOINT_KEY]["meta_optimizer"]}}
    target = kept_checkpoint(method, run)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reduced, target)
    size_mb = target.stat().st_size / 2**20
    advice = (f"commit it with `git add -f {target.relative_to(REPO)}`" if size_mb < MAX_TRACKED_MB else
              f"over the repository's {MAX_TRACKED_MB} MB limit for tracked files: keep it outside git")
    print(f"{method} {run}: {source.name} (step {checkpoint['global_step']}) kept as {target} ({size_mb:.1f} MB); "
          f"{advice}", flush=True)
    return target


def fit(methods: list[str], outer_steps: int, resume: bool, run: str, seed: int, val_every: int,
        overrides: list[str]) -> None:
    validation = (["--trainer.limit_val_batches=0"] if val_every == 0 else
                  [f"--trainer.val_check_interval={val_every}", "--model.init_args.baselines=[]"])
    procs = {}
    for method in methods:
        cmd = [sys.executable, "-m", "lightning_l2o", "fit", f"--config={REPO / 'configs' / f'{method}.yaml'}",
               f"--trainer.max_steps={outer_steps}", *validation,
               "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={OUT}",
               f"--trainer.logger.init_args.version={run}", f"--seed_everything={seed}", f"--data.init_args.seed={seed}",
               *(f"--{override}" for override in overrides)]
        if resume and last_checkpoint(method, run).is_file():
            cmd.append(f"--ckpt_path={last_checkpoint(method, run)}")
        print(" ".join(cmd), flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        log = (OUT / f"{method}_{run}_fit.log").open("a")
        procs[method] = (subprocess.Popen(cmd, cwd=REPO, env=_env(1), stdout=log, stderr=subprocess.STDOUT), time.time())
    for method, (proc, start) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"{method} fit failed; see {OUT / f'{method}_{run}_fit.log'}")
        print(f"{method}: {outer_steps} outer steps in {(time.time() - start) / 60:.1f} min", flush=True)
        keep(method, run)


def report(
    methods: list[str], steps: int, seeds: list[int], presets: list[str], lr_grid: list[float], val_seeds: list[int],
    name: str, baselines: list[str], runs: list[str], pretrained: list[str] | None, tuning_presets: list[str],
    learned_lr_grid: list[float] | None, cached_only: bool, weight_decay_grid: list[float],
) -> None:
    checkpoints = _pretrained(methods, pretrained) if pretrained is not None else _checkpoints(methods, runs)
    cmd = [sys.executable, "-m", "lightning_l2o.report", "--out_dir", str(OUT / name), "--steps", str(steps),
           "--seeds", str(seeds), "--tasks", str(presets), "--tuning_tasks", str(tuning_presets),
           "--lr_grid", str(lr_grid), "--weight_decay_grid", str(weight_decay_grid),
           "--learned_lr_grid", "null" if learned_lr_grid is None else str(learned_lr_grid),
           "--val_seeds", str(val_seeds), "--baselines", str(baselines),
           "--checkpoints", str(checkpoints), "--cache_dir", str(OUT / "runs"), "--cached_only", str(cached_only)]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=_env(1), check=True)


def _run_checkpoint(method: str, run: str) -> Path | None:
    """Run ``run``'s chosen checkpoint from its folder, or where this checkout has none, the one :func:`keep` left."""
    if last_checkpoint(method, run).is_file():
        return chosen_checkpoint(method, run)
    kept = kept_checkpoint(method, run)
    return kept if kept.is_file() else None


def _checkpoints(methods: list[str], runs: list[str]) -> dict[str, str | list[str]]:
    """Each method's chosen checkpoint (:func:`_run_checkpoint`) of every run in ``runs`` that it has (several: one
    per meta-training seed)."""
    found = {m: [str(path) for run in runs if (path := _run_checkpoint(m, run))] for m in methods}
    missing = [m for m, paths in found.items() if not paths]
    if missing:
        raise SystemExit(f"no last.ckpt or kept checkpoint of {missing} in runs {runs}; run `fit` first (or name "
                         f"other --runs)")
    for method, paths in found.items():
        print(f"{method}: {len(paths)} meta-training run(s): {paths}", flush=True)
    return {m: paths if len(paths) > 1 else paths[0] for m, paths in found.items()}


def _pretrained(methods: list[str], names: list[str]) -> dict[str, str]:
    """``{name: "pretrained:<name>"}`` of the shipped optimizers ``names``; none named: each method's shipped
    optimizer meta-trained on task 17 (``<method>_fashion_mnist_task17``), under the method's name."""
    from lightning_l2o.checkpoints import PRETRAINED_PREFIX
    from lightning_l2o.pretrained import list_pretrained

    wanted = dict(zip(names, names)) if names else {m: PRETRAINED.format(method=m) for m in methods}
    missing = [name for name in wanted.values() if name not in list_pretrained()]
    if missing:
        raise SystemExit(f"no shipped optimizer {missing} (shipped: {list_pretrained()})")
    return {label: PRETRAINED_PREFIX + name for label, name in wanted.items()}


def preset_axes(architecture: str) -> dict[str, int]:
    """Where a preset lies on the width and depth axes: ``{"width": 16}`` for ``*-width16``, ``{"depth": 2}`` for
    ``*-depth2``, both for the reference CNN (``width32`` is ``depth3``); ``{}`` for any other task."""
    from lightning_l2o.tasks.presets import DEPTH_CHANNELS, PRESETS, WIDTHS

    if architecture not in PRESETS:
        return {}
    dataset, arch = PRESETS[architecture]["dataset"], PRESETS[architecture]["arch"]
    widths = [h for h in WIDTHS if PRESETS[f"{dataset}-width{h}"]["arch"] == arch]
    depths = [n for n in range(1, len(DEPTH_CHANNELS) + 1) if arch["channels"] == list(DEPTH_CHANNELS[:n])]
    return {axis: values[0] for axis, values in (("width", widths), ("depth", depths)) if values}


def preset_parameters(architecture: str) -> int:
    """Parameters of a FashionMNIST / MNIST preset's CNN (one input channel, 10 classes)."""
    from lightning_l2o.tasks.classifier import ConvNet
    from lightning_l2o.tasks.presets import PRESETS

    return sum(p.numel() for p in ConvNet(1, num_classes=10, **PRESETS[architecture]["arch"]).parameters())


def generalization(reports: list[str], name: str) -> None:
    """One table and one figure of every learned method's paired difference to tuned Adam (test accuracy and log10
    final train loss) on each preset of ``reports``, written to
    ``benchmarks/results/replication/<name>/generalization.{md,png}``: entries ``NAME``, ``NAME:METHOD`` (that
    method's rows only) or ``NAME:METHOD#K`` (its meta-seed K of a report given several checkpoints); a preset and
    method found in several entries: the last one's row."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for entry in reports:
        report_name, _, selection = entry.partition(":")
        method, _, meta_seed = selection.partition("#")
        path = OUT / report_name / "paired.csv"
        if not path.is_file():
            raise SystemExit(f"{path} not found: run `report --name {report_name}` (with adam among --baselines) first")
        with path.open() as f:
            chosen = [r for r in csv.DictReader(f) if method in ("", r["method"])
                      and (r["meta_seed"] == meta_seed if meta_seed else r["meta_seeds"] == "1")]
        if not chosen:
            raise SystemExit(f"no row of {path} matches '{entry}' (NAME[:METHOD[#META_SEED]]; without #, only "
                             f"single-checkpoint rows)")
        rows.update({(r["architecture"], r["method"]): r for r in chosen})
    from lightning_l2o.tasks.presets import PRESETS

    unknown = sorted({a for a, _ in rows} - set(PRESETS))
    if unknown:
        raise SystemExit(f"generalization compares task presets only; {unknown} are not presets: leave their reports out")
    architectures = sorted({a for a, _ in rows}, key=preset_parameters)
    methods = list(dict.fromkeys(m for _, m in rows))
    header = [f"{m}: {label} [95 % CI] (seeds)" for m in methods for label, _ in METRICS.values()]
    lines = ["| preset | parameters | Adam (tuned), % | " + " | ".join(header) + " |", "|---" * (3 + len(header)) + "|"]
    for a in architectures:
        most_pairs = max((rows[(a, m)] for m in methods if (a, m) in rows), key=lambda r: int(r["pairs"]))
        adam = f"{float(most_pairs['reference_accuracy_pct']):.1f} ({most_pairs['pairs']})"
        cells = [a, f"{preset_parameters(a):,}", adam]
        differences = [_difference(rows.get((a, m)), metric) for m in methods for metric in METRICS]
        lines.append("| " + " | ".join(cells + differences) + " |")
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "generalization.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot_generalization(rows, methods, out / "generalization.png")
    print(f"written: {out / 'generalization.md'}, {out / 'generalization.png'}")


def baselines_table(report_name: str) -> None:
    """Each tuned baseline of one report beside its learned methods, per preset: every method's mean test accuracy
    over the test seeds (a baseline's with its tuned lr) and each learned method's paired difference in test
    accuracy to each baseline, written to ``benchmarks/results/replication/<report>/baselines.md``."""
    from lightning_l2o.meta_optimizers.baselines import BASELINES
    from lightning_l2o.reporting import paired

    path = OUT / report_name / "results.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `report --name {report_name}` first")
    accuracy: dict[tuple[str, str], dict[int, float]] = {}
    lrs: dict[tuple[str, str], str] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            method = r["method"] + (f"#{r['meta_seed']}" if r["meta_seed"] else "")
            value = math.nan if r["diverged"] == "True" else 100 * float(r["test_accuracy"])
            accuracy.setdefault((r["architecture"], method), {})[int(r["seed"])] = value
            lrs[(r["architecture"], method)] = r["lr"]
    methods = list(dict.fromkeys(m for _, m in accuracy))
    baselines = [m for m in methods if m in BASELINES]
    learned = [m for m in methods if m not in BASELINES]
    header = ([f"{b} (tuned), %" for b in baselines] + [f"{m}, %" for m in learned]
              + [f"{m} − {b} (pp) [95 % CI] (seeds)" for m in learned for b in baselines])
    lines = ["| preset | " + " | ".join(header) + " |", "|---" * (1 + len(header)) + "|"]
    for a in sorted({a for a, _ in accuracy}, key=preset_parameters):
        cells = [a]
        for m in baselines + learned:
            values = [v for v in accuracy.get((a, m), {}).values() if math.isfinite(v)]
            lr = f", lr {lrs[(a, m)]}" if m in baselines and values else ""
            cells.append(f"{sum(values) / len(values):.1f} ({len(values)}{lr})" if values else "—")
        for m in learned:
            for b in baselines:
                ours, theirs = accuracy.get((a, m), {}), accuracy.get((a, b), {})
                seeds = sorted(ours.keys() & theirs.keys())
                if not seeds:
                    cells.append("—")
                    continue
                p = paired([ours[s] for s in seeds], [theirs[s] for s in seeds])
                cells.append(_difference_cell(p.mean, p.low, p.high, p.verdict, p.n))
        lines.append("| " + " | ".join(cells) + " |")
    (OUT / report_name / "baselines.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {OUT / report_name / 'baselines.md'}")


def _difference(row: dict[str, str] | None, metric: str = "accuracy_pct") -> str:
    """A ``paired.csv`` row's difference in ``metric`` (a key of :data:`METRICS`) as :func:`_difference_cell`."""
    if row is None:
        return "—"
    diff, low, high = (float(row[f"{metric}_{k}"]) for k in ("diff", "ci_low", "ci_high"))
    return _difference_cell(diff, low, high, row[f"{metric}_verdict"], row["pairs"], METRICS[metric][1])


def _difference_cell(diff: float, low: float, high: float, verdict: str, pairs: int | str, decimals: int = 1) -> str:
    """``+1.2 [+0.3, +2.1] better (3)``: a paired difference, its 95 % CI and verdict (none without a CI)."""
    interval = f" [{low:+.{decimals}f}, {high:+.{decimals}f}] {verdict}" if math.isfinite(low) else ""
    return f"{diff:+.{decimals}f}{interval} ({pairs})"


def _plot_generalization(rows: dict[tuple[str, str], dict[str, str]], methods: list[str], path: Path) -> None:
    """Panels: (test accuracy, log10 final loss) x (width, depth); one series per method and dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from lightning_l2o.tasks.presets import PRESETS

    datasets = list(dict.fromkeys(PRESETS[a]["dataset"] for a, _ in rows if a in PRESETS))
    series = [(m, d) for m in methods for d in datasets]
    fig, panels = plt.subplots(len(METRICS), 2, figsize=(10, 3.6 * len(METRICS)), sharey="row", squeeze=False)
    for panel_row, (metric, (label, _)) in zip(panels, METRICS.items()):
        for panel, axis in zip(panel_row, ("width", "depth")):
            for i, (method, dataset) in enumerate(series):
                points = sorted((preset_axes(a)[axis], r) for (a, m), r in rows.items()
                                if m == method and a in PRESETS and PRESETS[a]["dataset"] == dataset
                                and axis in preset_axes(a))
                name = method if len(datasets) == 1 else f"{method}, {dataset}"
                _errorbar_series(panel, points, metric, axis, i - (len(series) - 1) / 2, name, f"C{i}")
            panel.axhline(0, color="black", linewidth=0.8)
            if axis == "width":
                panel.set_xscale("log", base=2)
                panel.axvline(16, color="grey", linestyle=":", label="meta-training width (task 17)")
            else:
                panel.xaxis.set_major_locator(MaxNLocator(integer=True))
            panel.set_xlabel(f"CNN {axis} ({'first-layer channels' if axis == 'width' else 'conv layers'})")
            panel.grid(alpha=0.3)
        panel_row[0].set_ylabel(f"{label} vs tuned Adam")
    entries = {label: handle for panel in panels.flat for handle, label in zip(*panel.get_legend_handles_labels())}
    panels[0][0].legend(entries.values(), entries.keys(), fontsize=8)  # every series, even one absent from this panel
    fig.suptitle("Paired difference to tuned Adam, 95 % CI (no bar: one seed); accuracy: higher is better, "
                 "loss: lower", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _errorbar_series(panel, points: list[tuple[int, dict[str, str]]], metric: str, axis: str, shift: float,
                     label: str, color: str) -> None:
    """One series of ``(axis value, table row)`` points: ``metric``'s paired difference with its CI, each point moved
    by ``shift`` series widths so that series sit side by side around each preset; one ``color`` in every panel."""
    if not points:
        return
    x = [p * 1.04**shift if axis == "width" else p + 0.08 * shift for p, _ in points]
    diff, low, high = ([float(r[f"{metric}_{k}"]) for _, r in points] for k in ("diff", "ci_low", "ci_high"))
    below = [d - lo if math.isfinite(lo) else 0.0 for d, lo in zip(diff, low)]
    above = [hi - d if math.isfinite(hi) else 0.0 for d, hi in zip(diff, high)]
    panel.errorbar(x, diff, yerr=[below, above], marker="o", capsize=3, label=label, color=color)


def main() -> None:
    from lightning_l2o.evaluation import WEIGHT_DECAY_GRID

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    fit_parser = sub.add_parser("fit")
    fit_parser.add_argument("--outer-steps", type=int, default=300)
    fit_parser.add_argument("--methods", nargs="+", choices=CONFIGS, default=list(METHODS))
    fit_parser.add_argument("--resume", action="store_true", help="continue from each method's last.ckpt")
    fit_parser.add_argument("--seed", type=int, default=0,
                            help="meta-training seed: the rule's initialisation and the training task stream")
    fit_parser.add_argument("--run", default="0", help="run folder under benchmarks/results/replication/<method>")
    fit_parser.add_argument("--val-every", type=int, default=0,
                            help="validate every N outer steps on the config's validation tasks and keep the best "
                                 "checkpoint, which `report` then uses (0: no validation, report uses last.ckpt)")
    fit_parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                            help="further settings of the config, as LightningCLI takes them without the leading --, "
                                 "e.g. model.init_args.outer_lr=0.003 (the run's config.yaml records them); "
                                 "several after one --set or over repeated --set")
    report_parser = sub.add_parser("report")
    report_parser.add_argument("--runs", nargs="+",
                               help="run folders of each method (several: one per meta-training seed; default 0)")
    report_parser.add_argument("--steps", type=int, default=1000)
    report_parser.add_argument("--methods", nargs="*", choices=CONFIGS,
                               help=f"learned methods (default: {' '.join(METHODS)}; none: only the baselines)")
    report_parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103, 104, 105])
    report_parser.add_argument("--presets", nargs="+", default=list(TEST_PRESETS))
    report_parser.add_argument("--lr-grid", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1])
    report_parser.add_argument("--weight-decay-grid", type=float, nargs="+", default=list(WEIGHT_DECAY_GRID),
                               help="weight decays tried with each lr for a baseline that has one (adamw; default: "
                                    f"{' '.join(map(str, WEIGHT_DECAY_GRID))})")
    report_parser.add_argument("--val-seeds", type=int, nargs="+", default=[201, 202])
    report_parser.add_argument("--tuning-presets", nargs="+", default=["17"],
                               help="presets whose validation seeds choose every lr and weight decay (default: task 17, as the seed's "
                                    "protocol); name the evaluated preset to tune on it, one report per preset "
                                    "(presets of one family given together share one lr)")
    report_parser.add_argument("--learned-lr-grid", type=float, nargs="+",
                               help="base lrs tried for each learned optimizer on the tuning presets' validation "
                                    "seeds, in the rule's own lr unit (ff_mixture_adam_schedule's 1e-3 is Adam's "
                                    "1e-2; default: each runs at its own lr)")
    report_parser.add_argument("--name", default="report", help="output folder under benchmarks/results/replication")
    report_parser.add_argument("--baselines", nargs="+", default=["adam", "adamw", "sgd_momentum"])
    report_parser.add_argument("--pretrained", nargs="*", metavar="NAME",
                               help="evaluate optimizers shipped in the package instead of --runs: the named ones "
                                    "(e.g. ff_mixture_adam_schedule), or with no name each method's "
                                    "<method>_fashion_mnist_task17")
    report_parser.add_argument("--cached-only", action="store_true",
                               help="run nothing: write the report (under another --name) from the runs the shared "
                                    "runs folder already has, e.g. to read a long report while it runs")
    generalization_parser = sub.add_parser("generalization")
    generalization_parser.add_argument("--reports", nargs="+", required=True,
                                       help="report folders under benchmarks/results/replication (written by report), each "
                                            "NAME, NAME:METHOD or NAME:METHOD#META_SEED")
    generalization_parser.add_argument("--name", default="generalization",
                                       help="output folder under benchmarks/results/replication")
    keep_parser = sub.add_parser("keep", help="what `fit` does at its end, for runs fitted without it")
    keep_parser.add_argument("--methods", nargs="+", choices=CONFIGS, required=True)
    keep_parser.add_argument("--runs", nargs="+", required=True, help="run folders of each method")
    baselines_parser = sub.add_parser("baselines")
    baselines_parser.add_argument("--report", required=True,
                                  help="a report folder under benchmarks/results/replication (written by report)")
    args = parser.parse_args()
    if args.stage == "fit":
        fit(args.methods, args.outer_steps, args.resume, args.run, args.seed, args.val_every, args.set)
    elif args.stage == "report" and args.pretrained is not None and args.runs:
        parser.error("--pretrained evaluates the shipped optimizers: drop --runs, or drop --pretrained")
    elif args.stage == "report" and args.pretrained and args.methods is not None:
        parser.error("--pretrained NAME ... evaluates the named optimizers, not --methods: drop --methods, or drop "
                     "the names to evaluate each method's <method>_fashion_mnist_task17")
    elif args.stage == "generalization":
        generalization(args.reports, args.name)
    elif args.stage == "keep":
        for method in args.methods:
            for run in args.runs:
                keep(method, run)
    elif args.stage == "baselines":
        baselines_table(args.report)
    else:
        report(
            list(METHODS) if args.methods is None else args.methods, args.steps, args.seeds, args.presets, args.lr_grid, args.val_seeds, args.name, args.baselines,
            args.runs or ["0"], args.pretrained, args.tuning_presets, args.learned_lr_grid, args.cached_only,
            args.weight_decay_grid,
        )


if __name__ == "__main__":
    main()
