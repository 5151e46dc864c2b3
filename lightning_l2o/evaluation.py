"""Meta-test: train held-out optimizees with an update rule (no meta-gradient) and tune baselines' settings (lr, and
weight decay where a baseline has one) on validation tasks."""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from lightning_l2o.meta_optimizers import BaselineSetting, MetaOptimizer, baseline_settings
from lightning_l2o.meta_optimizers.base import class_path
from lightning_l2o.tasks import TaskSpec
from lightning_l2o.unroll import InnerState, inner_step

DIVERGENCE_FACTOR = 1e6


@dataclass
class Trajectory:
    """One optimizee trained by one method: its loss curve, final metrics and the rule's per-step info.

    ``losses`` is the training loss at each inner step ``(T,)``; ``infos`` maps each info key to a
    ``(T, ...)`` tensor (scalars become ``(T,)``, embeddings ``(T, E)``). ``meta_seed`` tells apart the
    meta-training runs of one learned method: the index of its checkpoint among several; ``None`` otherwise.
    """

    spec: TaskSpec
    method: str
    lr: float
    losses: Tensor
    final: dict[str, float]
    diverged: bool
    infos: dict[str, Tensor] = field(default_factory=dict)
    meta_seed: int | None = None

    @property
    def final_loss(self) -> float:
        """Full-data training loss at the end; ``inf`` if the run diverged."""
        return math.inf if self.diverged else self.final["train_loss"]


def meta_test(
    update_rule: MetaOptimizer, spec: TaskSpec, lr: float | None = None, method: str | None = None,
    device: torch.device | str = "cpu",
) -> Trajectory:
    """Train a fresh optimizee of ``spec`` on ``device`` for ``spec.horizon`` steps with ``update_rule``
    (no meta-gradient).

    A run whose loss becomes non-finite or grows ``DIVERGENCE_FACTOR`` times above its start stops there
    and is marked ``diverged``; nothing raises.
    """
    lr = update_rule.lr if lr is None else lr
    losses, infos = [], defaultdict(list)
    with torch.inference_mode(False), torch.enable_grad():
        state = InnerState.start(spec, update_rule, device)
        diverged = False
        for _ in range(spec.horizon):
            state, loss, _, info = inner_step(update_rule, state, lr, create_graph=False, track_update=False)
            value = loss.item()
            losses.append(value)
            for key, v in info.items():
                infos[key].append(v.detach())
            if not math.isfinite(value) or value > DIVERGENCE_FACTOR * max(abs(losses[0]), 1.0):
                diverged = True
                break
        diverged = diverged or not state.is_finite()
        final = state.task.evaluate(state.params) if not diverged else _nan_metrics()
    diverged = diverged or not math.isfinite(final["train_loss"])
    return Trajectory(
        spec, method or update_rule.name, float(lr), torch.tensor(losses), final, diverged,
        {k: torch.stack(v).cpu() for k, v in infos.items()},
    )


class TrajectoryCache:
    """Meta-test runs kept on disk, a file per run, so that a report run again (or killed and started again) reads
    the runs it has instead of training them again, and reports that share a folder share their runs.

    A run's file is named by a hash of the rule (class, configuration and weights), the task spec (with its seed
    and horizon), the lr, the device and the source code of this package: any change to the code (not to its
    comments or docstrings) computes runs afresh. The method's name only labels the file: the same rule run under
    another name reads the run it has.

    Processes sharing the folder make each run once: while one trains a run it holds the ``flock`` of
    ``<hash>.lock`` in the folder. :meth:`meta_test` waits for a run another process is making and reads it;
    :meth:`try_meta_test` returns ``None`` for it at once, so that the caller can do other runs first. The kernel
    releases the lock of a process that ends, killed or not, so no lock is ever left behind (on a network file
    system, where that system supports ``flock``).
    """

    def __init__(self, folder: str | Path, poll_seconds: float = 5.0) -> None:
        self.folder = Path(folder)
        self.poll_seconds = poll_seconds

    def meta_test(self, update_rule: MetaOptimizer, spec: TaskSpec, method: str, device: torch.device | str = "cpu",
                  lr: float | None = None) -> Trajectory:
        """:func:`meta_test` of ``update_rule`` on ``spec`` at ``lr`` (default its own), read from the folder where
        it was run, and waited for (every ``poll_seconds``) where another process is running it."""
        while (trajectory := self.try_meta_test(update_rule, spec, method, device, lr)) is None:
            time.sleep(self.poll_seconds)
        return trajectory

    def try_meta_test(self, update_rule: MetaOptimizer, spec: TaskSpec, method: str,
                      device: torch.device | str = "cpu", lr: float | None = None) -> Trajectory | None:
        """:meth:`meta_test`, or ``None`` at once where another live process is running it."""
        lr = update_rule.lr if lr is None else float(lr)
        digest = _run_digest(update_rule, spec, device, lr)
        cached = self._load(digest, spec, method)
        if cached is not None:
            return cached
        self.folder.mkdir(parents=True, exist_ok=True)
        with _run_lock(self.folder / f"{digest}.lock") as held:
            if not held:
                return None
            cached = self._load(digest, spec, method)  # made by another process between the read and the lock
            if cached is not None:
                return cached
            trajectory = meta_test(update_rule, spec, lr=lr, method=method, device=device)
            path = self._path(digest, spec, method)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            torch.save({"lr": trajectory.lr, "losses": trajectory.losses, "final": trajectory.final,
                        "diverged": trajectory.diverged, "infos": trajectory.infos}, partial)
            os.replace(partial, path)  # whole files only, also with reports running side by side
            return trajectory

    def read(self, update_rule: MetaOptimizer, spec: TaskSpec, method: str, device: torch.device | str = "cpu",
             lr: float | None = None) -> Trajectory | None:
        """The run :meth:`meta_test` would read from the folder, or ``None`` where it has not been made."""
        lr = update_rule.lr if lr is None else float(lr)
        return self._load(_run_digest(update_rule, spec, device, lr), spec, method)

    def _path(self, digest: str, spec: TaskSpec, method: str) -> Path:
        return self.folder / f"{method}-{spec.name}-{digest}.pt"

    def _load(self, digest: str, spec: TaskSpec, method: str) -> Trajectory | None:
        path = self._path(digest, spec, method)
        cached = path if path.is_file() else next(self.folder.glob(f"*-{digest}.pt"), None)
        if cached is None:
            return None
        run = torch.load(cached, weights_only=True)
        return Trajectory(spec, method, run["lr"], run["losses"], run["final"], run["diverged"], run["infos"])


@contextlib.contextmanager
def _run_lock(lock: Path) -> Iterator[bool]:
    """Hold the ``flock`` of ``lock`` for the block, which gets whether it holds it (``False``: another process
    does). The kernel releases a process's lock when it ends, killed or not, so a lock file a killed report left is
    simply locked again. Without ``fcntl`` (Windows) every block holds it: reports side by side may make a run twice.
    """
    if fcntl is None:
        yield True
        return
    descriptor = _claim(lock)
    if descriptor is None:
        yield False
        return
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)  # before the release, so that a process that opened this file locks a new one
        os.close(descriptor)


def _claim(lock: Path) -> int | None:
    """An open descriptor of ``lock`` holding its ``flock``, or ``None`` where another process holds it. Where its
    holder deleted the file between this open and this lock, the file now at that path is tried instead."""
    while True:
        descriptor = os.open(lock, os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        try:
            if os.stat(lock).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def _run_digest(update_rule: MetaOptimizer, spec: TaskSpec, device: torch.device | str, lr: float) -> str:
    key = {"rule": _rule_digest(update_rule), "spec": spec.to_dict(), "device": str(device), "code": _code_digest(),
           "lr": lr}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _rule_digest(update_rule: MetaOptimizer) -> str:
    digest = hashlib.sha256(class_path(type(update_rule)).encode())
    digest.update(json.dumps(update_rule.config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(update_rule.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@functools.cache
def _code_digest() -> str:
    """A hash of this package's source: its ``.c`` files and the code of its ``.py`` files (:func:`_python_code`)."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.c")]):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(_python_code(path.read_text()).encode() if path.suffix == ".py" else path.read_bytes())
    return digest.hexdigest()


class _DropStrings(ast.NodeTransformer):
    def visit_Expr(self, node: ast.Expr) -> ast.Expr | None:
        return None if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) else node


def _python_code(source: str) -> str:
    """``source``'s syntax tree without its comments, docstrings and other bare strings, none of which a run executes:
    a change to them leaves a run's key as it was, any other change to the code does not."""
    return ast.dump(_DropStrings().visit(ast.parse(source)))


def _nan_metrics() -> dict[str, float]:
    return {"train_loss": math.nan, "test_loss": math.nan, "test_accuracy": math.nan}


WEIGHT_DECAY_GRID = (1e-3, 1e-2, 1e-1)
"""The weight decays tried by default for a baseline that has one
(:data:`~lightning_l2o.meta_optimizers.DECAYED_BASELINES`): a decade either side of ``torch.optim.AdamW``'s 0.01."""


def grid_search(
    baselines: Sequence[str], lr_grid: Sequence[float], specs: Iterable[TaskSpec], device: torch.device | str = "cpu",
    weight_decay_grid: Sequence[float] = WEIGHT_DECAY_GRID,
) -> dict[tuple[str, BaselineSetting, str], Trajectory]:
    """Run every baseline at every setting of :func:`~lightning_l2o.meta_optimizers.baseline_settings` (each lr, and
    each weight decay where the baseline has one) on every spec: ``{(baseline, setting, spec.name): trajectory}``."""
    return {
        (name, setting, spec.name): meta_test(
            setting.build(name), spec, method=name, device=device)
        for spec in specs
        for name in baselines
        for setting in baseline_settings(name, lr_grid, weight_decay_grid)
    }


def validation_scores(grid: dict[tuple[str, Hashable, str], Trajectory]) -> dict[tuple[str, str, Hashable], float]:
    """Per ``(method, family, setting)`` of a :func:`grid_search` (or of any runs keyed alike, e.g. by a learned
    rule's lr): the mean log10 final training loss over its runs (a diverged run counts as ``inf``): the score
    :func:`best_settings` minimises."""
    values: dict[tuple[str, str, Hashable], list[float]] = defaultdict(list)
    for (name, setting, _), traj in grid.items():
        values[(name, traj.spec.family, setting)].append(log10_loss(traj.final_loss))
    return {key: sum(v) / len(v) for key, v in values.items()}


def best_settings(grid: dict[tuple[str, Hashable, str], Trajectory]) -> dict[tuple[str, str], Hashable]:
    """Per ``(method, family)``: the setting with the lowest mean log final training loss (diverged = worst); the
    first of equals in ``grid``'s order."""
    best: dict[tuple[str, str], tuple[float, Hashable]] = {}
    for (name, family, setting), score in validation_scores(grid).items():
        if (name, family) not in best or score < best[(name, family)][0]:
            best[(name, family)] = (score, setting)
    return {key: setting for key, (_, setting) in best.items()}


def log10_loss(loss: float) -> float:
    """``log10(loss)``, floored at 1e-12; ``inf`` for a non-finite loss."""
    return math.log10(max(loss, 1e-12)) if math.isfinite(loss) else math.inf


def summarize(trajectories: Iterable[Trajectory]) -> list[dict[str, float | str | int]]:
    """Mean and std per ``(architecture, method)`` of final train loss and test accuracy, diverged runs counted."""
    groups: dict[tuple[str, str], list[Trajectory]] = defaultdict(list)
    for traj in trajectories:
        groups[(traj.spec.architecture, traj.method)].append(traj)
    rows = []
    for (architecture, method), trajs in sorted(groups.items()):
        ok = [t for t in trajs if not t.diverged]
        loss = torch.tensor([t.final["train_loss"] for t in ok], dtype=torch.float64)
        acc = torch.tensor([t.final["test_accuracy"] for t in ok], dtype=torch.float64)
        rows.append({
            "architecture": architecture, "method": method, "lr": _lr_label(trajs), "runs": len(trajs),
            "diverged": len(trajs) - len(ok),
            "final_loss_mean": _mean(loss), "final_loss_std": _std(loss),
            "test_accuracy_mean": _mean(acc), "test_accuracy_std": _std(acc),
        })
    return rows


def _lr_label(trajs: Sequence[Trajectory]) -> str:
    return "/".join(f"{lr:g}" for lr in sorted({t.lr for t in trajs}))


def _mean(x: Tensor) -> float:
    return float(x.mean()) if len(x) else math.nan


def _std(x: Tensor) -> float:
    return float(x.std(unbiased=False)) if len(x) else math.nan
