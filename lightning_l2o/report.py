"""The evaluation report: learned optimizers and tuned baselines side by side on task presets x seeds.

    python -m lightning_l2o.report --config configs/eval/suite.yaml --checkpoints '{ff: [a.ckpt, b.ckpt], lstm: l.ckpt}'

Every baseline's learning rate is chosen on ``lr_grid`` per task family on the validation seeds of the
tuning tasks (never on test seeds), with its weight decay from ``weight_decay_grid`` for a baseline that has one
(``adamw``), and so is every learned optimizer's base lr from ``learned_lr_grid`` where one is given (else each runs at
its own); then every learned optimizer (each checkpoint of a method given a list, one per meta-training seed) and every
tuned baseline trains each task preset with each test seed for ``steps`` inner steps. ``out_dir`` receives
``results.md`` (mean ± std of final train loss and test accuracy, the settings tuning chose, and each learned method
paired against tuned Adam on the same test seeds: mean difference, 95 % confidence interval, wins / losses, verdict),
``results.csv`` (one row per run), ``summary.csv``,
``paired.csv``, ``curves.csv``, ``loss_curves.png`` and a TensorBoard run (``tensorboard --logdir <out_dir>``).
A diverging optimizer is recorded as diverged, not raised. Every run is kept in ``cache_dir``
(:class:`~lightning_l2o.evaluation.TrajectoryCache`): a killed report resumes where it stopped when started again,
a report that adds a checkpoint to an earlier one's list only runs the new checkpoint, and reports started side by
side on one ``cache_dir`` (e.g. the same command twice, one per core) share out the runs, each made once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
from jsonargparse import auto_cli
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from lightning_l2o.allocator import keep_freed_memory
from lightning_l2o.checkpoints import load_meta_optimizer
from lightning_l2o.errors import PARSER_OPTIONS, ConfigError, config_errors_exit
from lightning_l2o.evaluation import WEIGHT_DECAY_GRID, Trajectory, TrajectoryCache, best_settings
from lightning_l2o.meta_optimizers import MetaOptimizer
from lightning_l2o.meta_optimizers.baselines import BASELINES, BaselineSetting, baseline_settings
from lightning_l2o.reporting import (
    curve_rows,
    markdown_table,
    method_rows,
    paired_rows,
    paired_table,
    plot_loss_curves,
    result_rows,
    save_figure,
    write_csv,
)
from lightning_l2o.tasks import TaskSpec, build_task

REFERENCE = "adam"
"""The baseline every learned method is paired against in ``results.md`` and ``paired.csv``."""
Job = tuple[MetaOptimizer, TaskSpec, str, int | None, float | None]
"""One run of a report: the rule, the task, the method's name, its meta-seed and lr (``None``: the rule's own)."""


def evaluation_report(
    checkpoints: dict[str, str | list[str]] | None = None,
    tasks: Sequence[str | TaskSpec] = ("17",),
    seeds: Sequence[int] = (101, 102, 103, 104, 105),
    steps: int = 1000,
    baselines: Sequence[str] = ("adam", "adamw", "sgd_momentum"),
    lr_grid: Sequence[float] = (0.001, 0.003, 0.01, 0.03, 0.1),
    weight_decay_grid: Sequence[float] = WEIGHT_DECAY_GRID,
    tuning_tasks: Sequence[str | TaskSpec] | None = None,
    learned_lr_grid: Sequence[float] | None = None,
    val_seeds: Sequence[int] = (201, 202, 203),
    out_dir: str = "reports/evaluation",
    data_dir: str | None = None,
    device: str = "cpu",
    cache_dir: str | None = None,
    cached_only: bool = False,
) -> list[Trajectory]:
    """Write the evaluation report and return every trajectory.

    Args:
        checkpoints: ``{method name: fit checkpoint}`` of the learned optimizers to evaluate; a list of
            checkpoints instead of one for a method meta-trained with several seeds (each is evaluated, the
            report gives every meta-seed and mean ± std over them).
        tasks: task presets (names or numeric ids, see :mod:`lightning_l2o.tasks.presets`) or task entries as in
            a data config (``{family: mlp, dataset: digits, arch: {hidden: [32]}}``); ``steps`` sets their horizon.
        seeds: test seeds of every task.
        steps: inner steps each optimizee is trained for.
        baselines: hand-designed optimizers (``adam``, ``adamw``, ``sgd_momentum``).
        lr_grid: learning rates tried for each baseline.
        weight_decay_grid: weight decays tried, with each lr, for a baseline that has one (``adamw``; ``[0.01]``:
            ``torch.optim.AdamW``'s default only).
        tuning_tasks: presets or task entries whose validation seeds choose the baselines' settings (default:
            ``tasks``).
        learned_lr_grid: base lrs tried for each learned optimizer (each checkpoint on its own), chosen on the
            tuning tasks' validation seeds as the baselines' are; ``None``: each runs at the lr it was meta-trained
            with. The unit is the rule's own ``lr`` (what ``load_pretrained(..., lr=...)`` takes), not Adam's: a
            rule with ``adam_lr`` runs Adam's step at ``adam_lr * lr / rule.lr`` (``ff_mixture_adam_schedule``:
            lr 1e-3 is Adam's 1e-2), so a grid around the rule's lr, e.g. ``[1e-4, 3e-4, 1e-3, 3e-3]`` there.
        val_seeds: validation seeds (must not overlap ``seeds``).
        out_dir: folder of the tables, figures and TensorBoard run.
        data_dir: folder of torchvision datasets (default ``$L2O_DATA_DIR``, else ``./data``).
        device: where optimizees train (``cpu``, ``cuda``).
        cache_dir: folder of the runs already made (default ``<out_dir>/runs``); reports that share it share their
            runs (the same rule, task, seed, device and code), also while running side by side: a run another
            report is making is left to it and read when it lands.
        cached_only: run nothing; write the report from the test runs ``cache_dir`` already has, e.g. to read a
            long report while it runs (the paired tables pair the seeds both sides have). Every tuning run must be
            there.
    """
    learned = _load_learned(checkpoints or {})
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown or not lr_grid or min(lr_grid) <= 0 or not weight_decay_grid or min(weight_decay_grid) < 0 or steps < 1:
        raise ConfigError(f"baselines must be names from {list(BASELINES)} (unknown: {unknown}), lr_grid positive "
                          f"learning rates, weight_decay_grid weight decays >= 0 and steps >= 1; got {list(lr_grid)}, "
                          f"{list(weight_decay_grid)}, {steps}")
    if learned_lr_grid is not None and (not learned_lr_grid or min(learned_lr_grid) <= 0):
        raise ConfigError(f"learned_lr_grid must be positive learning rates, or null to run each learned optimizer "
                          f"at its own lr; got {list(learned_lr_grid)}")
    if set(seeds) & set(val_seeds):
        raise ConfigError(f"seeds and val_seeds must be disjoint; both contain {sorted(set(seeds) & set(val_seeds))}")
    test_specs = _specs(tasks, seeds, steps, data_dir)
    val_specs = _specs(tasks if tuning_tasks is None else tuning_tasks, val_seeds, steps, data_dir)
    learned_grid = list(learned_lr_grid or ())
    settings = {name: baseline_settings(name, lr_grid, weight_decay_grid) for name in baselines}
    runs = (len(val_specs) * (sum(map(len, settings.values())) + len(learned) * len(learned_grid))
            + len(test_specs) * (len(learned) + len(baselines)))
    progress = tqdm(total=runs, desc="evaluation runs", unit="run", disable=cached_only)
    cache = TrajectoryCache(Path(out_dir) / "runs" if cache_dir is None else cache_dir)
    fetch = cache.read if cached_only else cache.try_meta_test

    def run_all(jobs: list[Job]) -> list[Trajectory | None]:
        """Each job's run, read or made; a run another process is making is taken up after the others."""
        made = []
        for rule, spec, method, meta_seed, lr in jobs:
            progress.set_postfix_str(f"{_label(method, meta_seed)} on {spec.name}")
            made.append(fetch(rule, spec, method, device, lr))
            progress.update(int(made[-1] is not None))
        for index, (rule, spec, method, meta_seed, lr) in enumerate(jobs):
            if made[index] is None and not cached_only:
                progress.set_postfix_str(f"{_label(method, meta_seed)} on {spec.name}, made by another process")
                made[index] = cache.meta_test(rule, spec, method, device, lr)
                progress.update()
        return [None if t is None else replace(t, meta_seed=job[3]) for t, job in zip(made, jobs)]

    tried: list[tuple[Job, BaselineSetting | float]] = [  # each tuning run and the setting it tries
        ((setting.build(name), spec, name, None, setting.lr), setting)
        for spec in val_specs for name in baselines for setting in settings[name]]
    tried += [((rule, spec, method, meta_seed, lr), lr)
              for spec in val_specs for method, meta_seed, rule in learned for lr in learned_grid]
    grid = {(_label(job[2], job[3]), setting, job[1].name): trajectory
            for (job, setting), trajectory in zip(tried, run_all([job for job, _ in tried]))}
    missing = [key for key, trajectory in grid.items() if trajectory is None]
    if missing:
        raise ConfigError(f"cached_only: {len(missing)} of {len(grid)} tuning runs are not in {cache.folder} (e.g. "
                          f"{missing[0]}); run the report without cached_only until its tuning runs are done")
    tuned = best_settings(grid)

    def tuned_setting(name: str, spec: TaskSpec) -> BaselineSetting | float:  # a learned rule's: its lr
        if (name, spec.family) not in tuned:
            raise ConfigError(f"no tuning task of family '{spec.family}' for {spec.name}; add one to tuning_tasks")
        return tuned[(name, spec.family)]

    test_jobs: list[Job] = []
    for spec in test_specs:
        test_jobs += [(rule, spec, method, meta_seed, tuned_setting(_label(method, meta_seed), spec) if learned_grid
                       else None) for method, meta_seed, rule in learned]
        for name in baselines:
            setting = tuned_setting(name, spec)
            test_jobs.append((setting.build(name), spec, name, None, None))
    made = run_all(test_jobs)
    trajectories = [t for t in made if t is not None]
    if cached_only:
        print(f"cached_only: {len(trajectories)} of {len(made)} test runs are in {cache.folder}; the report covers "
              f"those")
        if not trajectories:
            raise ConfigError(f"cached_only: none of the {len(made)} test runs is in {cache.folder} yet")
    progress.close()
    write_report(trajectories, Path(out_dir), list(dict.fromkeys(method for method, _, _ in learned)), tuned)
    return trajectories


def write_report(trajectories: list[Trajectory], out_dir: Path, learned: list[str],
                 tuned: dict[tuple[str, str], BaselineSetting | float] | None = None) -> None:
    """Tables, curves and a TensorBoard run of ``trajectories`` in ``out_dir``; the ``learned`` methods are paired
    against :data:`REFERENCE` if it was run; ``tuned``: the setting chosen per ``(method, task family)`` on the
    validation seeds (a baseline's :class:`~lightning_l2o.meta_optimizers.BaselineSetting`, a learned rule's lr)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(trajectories)
    if tuned:
        table += "\n\nChosen on the validation seeds: " + "; ".join(
            f"{name} on {family}: {setting if isinstance(setting, BaselineSetting) else f'lr {setting:g}'}"
            for (name, family), setting in tuned.items()) + "."
    if learned and any(t.method == REFERENCE for t in trajectories):
        paired = paired_rows(trajectories, REFERENCE, learned)
        table += "\n\n" + paired_table(paired, REFERENCE)
        write_csv(paired, out_dir / "paired.csv")
    (out_dir / "results.md").write_text(table + "\n")
    write_csv(result_rows(trajectories), out_dir / "results.csv")
    summary = method_rows(trajectories)
    write_csv(summary, out_dir / "summary.csv")
    write_csv(curve_rows(trajectories), out_dir / "curves.csv")
    fig = plot_loss_curves(trajectories)
    save_figure(fig, out_dir / "loss_curves.png")
    with SummaryWriter(str(out_dir / "tensorboard")) as writer:
        writer.add_figure("evaluation/loss_curves", fig)
        writer.add_text("evaluation/results", table)
        for row in summary:
            prefix = f"evaluation/{row['architecture']}/{row['method']}"
            writer.add_scalar(f"{prefix}/final_loss", row["final_loss_mean"])
            writer.add_scalar(f"{prefix}/test_accuracy", row["test_accuracy_mean"])
            writer.add_scalar(f"{prefix}/diverged", row["diverged"])
    plt.close(fig)
    print(table)


def _load_learned(checkpoints: dict[str, str | list[str]]) -> list[tuple[str, int | None, MetaOptimizer]]:
    """``(method, meta-seed, rule)`` per checkpoint; the meta-seed is its index in the method's list, ``None`` for
    a method given one path."""
    clashes = sorted(set(checkpoints) & set(BASELINES))
    if clashes:
        raise ConfigError(f"checkpoint names {clashes} clash with baseline names; name them e.g. 'ff' or 'lstm'")
    learned = []
    for name, given in checkpoints.items():
        if isinstance(given, str | Path):
            learned.append((name, None, load_meta_optimizer(given)))
            continue
        paths = [str(path) for path in given]
        if not paths or len(set(paths)) < len(paths):
            raise ConfigError(f"checkpoints.{name} must be one path or a list of distinct paths, one per "
                              f"meta-training seed; got {paths}")
        learned += [(name, meta_seed, load_meta_optimizer(path)) for meta_seed, path in enumerate(paths)]
    return learned


def _label(method: str, meta_seed: int | None) -> str:
    return method if meta_seed is None else f"{method} #{meta_seed}"


def _specs(tasks: Sequence[str | TaskSpec], seeds: Sequence[int], steps: int, data_dir: str | None) -> list[TaskSpec]:
    if not tasks or not seeds:
        raise ConfigError("tasks, tuning_tasks, seeds and val_seeds must not be empty")
    templates = [replace(t, horizon=steps, data_dir=t.data_dir or data_dir) if isinstance(t, TaskSpec)
                 else TaskSpec(preset=str(t), horizon=steps, data_dir=data_dir) for t in tasks]
    for template in templates:
        build_task(template)
    return [t.with_seed(s) for t in templates for s in seeds]


def main(args: list[str] | None = None) -> None:
    """``python -m lightning_l2o.report``: :func:`evaluation_report` from a YAML ``--config`` and flags (the process
    keeps freed memory for reuse: :func:`~lightning_l2o.allocator.keep_freed_memory`)."""
    keep_freed_memory()
    with config_errors_exit(args):
        auto_cli(evaluation_report, args=args, **PARSER_OPTIONS)


if __name__ == "__main__":
    main()
