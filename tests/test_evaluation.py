import math
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch

from lightning_l2o import evaluation
from lightning_l2o.evaluation import (
    TrajectoryCache,
    _python_code,
    _run_digest,
    best_settings,
    grid_search,
    log10_loss,
    meta_test,
    summarize,
    validation_scores,
)
from lightning_l2o.meta_optimizers import BaselineSetting, Opt2Vec, SGDMomentum
from lightning_l2o.tasks import TaskSpec

SPEC = TaskSpec("quadratic", arch={"dim": 5}, horizon=30, seed=101)


def test_meta_test_records_curve_infos_and_final_metrics():
    traj = meta_test(Opt2Vec(), SPEC)
    assert traj.losses.shape == (30,) and not traj.diverged
    assert traj.infos["embedding"].shape == (30, 16) and traj.infos["lr_scale"].shape == (30,)
    assert traj.final_loss < traj.losses[0]
    assert not traj.infos["embedding"].requires_grad


def test_divergence_is_marked_not_raised():
    traj = meta_test(SGDMomentum(lr=10.0), SPEC)
    assert traj.diverged and traj.final_loss == math.inf and len(traj.losses) < 30


def test_best_lr_is_chosen_per_family_and_diverged_runs_lose():
    specs = [SPEC, SPEC.with_seed(102)]
    grid = grid_search(["sgd_momentum", "adam"], [1e-4, 1e-2, 10.0], specs)
    assert len(grid) == 12
    chosen = best_settings(grid)
    assert chosen[("sgd_momentum", "quadratic")] == BaselineSetting(1e-2)
    assert chosen[("adam", "quadratic")].lr != 10.0 or not grid[("adam", BaselineSetting(10.0), SPEC.name)].diverged
    scores = validation_scores(grid)
    assert scores[("sgd_momentum", "quadratic", BaselineSetting(10.0))] == math.inf
    assert scores[("adam", "quadratic", BaselineSetting(1e-2))] == pytest.approx(
        sum(log10_loss(grid[("adam", BaselineSetting(1e-2), spec.name)].final_loss) for spec in specs) / 2)
    rows = summarize(grid.values())
    diverged = {(r["method"], r["lr"]): r["diverged"] for r in rows}
    assert diverged[("sgd_momentum", "0.0001/0.01/10")] == 2


def test_adamw_weight_decay_is_tuned_with_its_lr_on_the_validation_runs():
    """AdamW tries every (lr, weight decay) pair; a weight decay that pulls the optimum to zero loses to a small one
    and the chosen setting is the run with the lowest validation loss. Adam and SGD-momentum try lrs only."""
    specs = [SPEC, SPEC.with_seed(102)]
    grid = grid_search(["adamw", "adam"], [0.03, 0.1], specs, weight_decay_grid=[0.0, 3.0])
    tried = {(name, setting) for name, setting, _ in grid}
    assert tried == {("adamw", BaselineSetting(lr, wd)) for lr in (0.03, 0.1) for wd in (0.0, 3.0)} | {
        ("adam", BaselineSetting(lr)) for lr in (0.03, 0.1)}
    scores = validation_scores(grid)
    chosen = best_settings(grid)[("adamw", "quadratic")]
    assert chosen.weight_decay == 0.0
    assert scores[("adamw", "quadratic", chosen)] == min(
        score for (name, _, _), score in scores.items() if name == "adamw")
    decayed = grid[("adamw", BaselineSetting(0.1, 3.0), SPEC.name)]
    plain = grid[("adamw", BaselineSetting(0.1, 0.0), SPEC.name)]
    assert decayed.final_loss > plain.final_loss  # the weight decay was applied, not dropped


def test_meta_test_runs_under_inference_mode():
    with torch.inference_mode():
        traj = meta_test(Opt2Vec(), SPEC)
    assert not traj.diverged


def _run_files(folder) -> list[str]:
    return sorted(path.name for path in folder.glob("*.pt"))


def _sgd_run(cache: TrajectoryCache, wait: bool = False):
    """The cache's run of SGD-momentum at 0.05 on ``SPEC``: waited for, or tried (``None`` where it is locked)."""
    return (cache.meta_test if wait else cache.try_meta_test)(SGDMomentum(lr=0.05), SPEC, "sgd")


def _sgd_lock(folder):
    """Where a process making :func:`_sgd_run` holds its lock."""
    return folder / f"{_run_digest(SGDMomentum(lr=0.05), SPEC, 'cpu', 0.05)}.lock"


HOLD_LOCK = """import fcntl, os, sys, time
descriptor = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of :func:`_sgd_run` in ``tmp_path``, killed after the test."""
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(_sgd_lock(tmp_path))], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline() == "locked\n"
    yield process
    process.kill()
    process.wait()


def test_a_run_another_process_is_making_is_left_to_it_then_read_when_it_lands(tmp_path, holder, monkeypatch):
    made_elsewhere = _sgd_run(TrajectoryCache(tmp_path / "elsewhere"))
    cache = TrajectoryCache(tmp_path, poll_seconds=0.05)
    assert _sgd_run(cache) is None
    assert _run_files(tmp_path) == [] and _sgd_lock(tmp_path).exists()

    def land() -> None:  # the holder finishes: its run file appears, its lock goes
        time.sleep(0.3)
        (run,) = (tmp_path / "elsewhere").glob("*.pt")
        shutil.copy(run, tmp_path / run.name)
        _sgd_lock(tmp_path).unlink()
        holder.kill()

    monkeypatch.setattr(evaluation, "meta_test", lambda *a, **kw: pytest.fail("the run was made twice"))
    landing = threading.Thread(target=land)
    landing.start()
    waited = _sgd_run(cache, wait=True)
    landing.join()
    assert waited.losses.tolist() == made_elsewhere.losses.tolist() and waited.final_loss == made_elsewhere.final_loss


def test_the_lock_file_of_a_killed_process_is_locked_again(tmp_path, holder):
    holder.kill()
    holder.wait()
    assert _sgd_lock(tmp_path).exists()
    run = _sgd_run(TrajectoryCache(tmp_path))
    assert run is not None and not run.diverged
    assert len(_run_files(tmp_path)) == 1 and not _sgd_lock(tmp_path).exists()


def test_a_lock_file_replaced_between_its_open_and_its_lock_is_tried_again(tmp_path, monkeypatch):
    """The holder deletes its file and releases it after this process opened it, and a third process locks the
    new file at that path: locking the deleted file must not count."""
    lock, flock = _sgd_lock(tmp_path), evaluation.fcntl.flock
    third = []

    def replaced_then_flock(descriptor: int, operation: int) -> None:
        if not third:
            lock.unlink()
            third.append(os.open(lock, os.O_CREAT | os.O_RDWR))
            flock(third[0], operation)
        flock(descriptor, operation)

    lock.touch()
    monkeypatch.setattr(evaluation.fcntl, "flock", replaced_then_flock)
    assert _sgd_run(TrajectoryCache(tmp_path)) is None
    assert _run_files(tmp_path) == []
    os.close(third[0])


def test_without_flock_runs_are_made_unlocked(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "fcntl", None)
    assert _sgd_run(TrajectoryCache(tmp_path)) is not None
    assert len(_run_files(tmp_path)) == 1 and not _sgd_lock(tmp_path).exists()


def test_a_run_key_reads_the_code_not_its_comments_or_docstrings():
    source = 'def step(x):\n    return x - 0.1 * x\n'
    documented = ('"""A module."""\n\n\ndef step(x):  # plain SGD\n    """One step."""\n    "a bare string"\n'
                  '    return (x\n            - 0.1 * x)\n')
    assert _python_code(documented) == _python_code(source)
    assert _python_code(source.replace("0.1", "0.2")) != _python_code(source)
    assert _python_code(source.replace("return x", "print('x')\n    return x")) != _python_code(source)
