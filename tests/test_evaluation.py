import math

import pytest
import torch

from lightning_l2o.evaluation import best_lrs, grid_search, log10_loss, meta_test, summarize, validation_scores
from lightning_l2o.meta_optimizers import Opt2Vec, SGDMomentum
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
    lrs = best_lrs(grid)
    assert lrs[("sgd_momentum", "quadratic")] == 1e-2
    assert lrs[("adam", "quadratic")] != 10.0 or not grid[("adam", 10.0, SPEC.name)].diverged
    scores = validation_scores(grid)
    assert scores[("sgd_momentum", "quadratic", 10.0)] == math.inf
    assert scores[("adam", "quadratic", 1e-2)] == pytest.approx(
        sum(log10_loss(grid[("adam", 1e-2, spec.name)].final_loss) for spec in specs) / 2)
    rows = summarize(grid.values())
    diverged = {(r["method"], r["lr"]): r["diverged"] for r in rows}
    assert diverged[("sgd_momentum", "0.0001/0.01/10")] == 2


def test_meta_test_runs_under_inference_mode():
    with torch.inference_mode():
        traj = meta_test(Opt2Vec(), SPEC)
    assert not traj.diverged
