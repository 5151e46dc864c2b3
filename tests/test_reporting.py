"""The report's statistics on synthetic trajectories: t quantiles, paired differences against a reference and
their aggregation over meta-training seeds, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_l2o.evaluation import Trajectory
from lightning_l2o.reporting import EXACT_T_MAX_DF, markdown_table, paired, paired_rows, paired_table, t_quantile
from lightning_l2o.tasks import TaskSpec

SPEC = TaskSpec("quadratic", arch={"dim": 5})
SEEDS = (101, 102, 103, 104)
T3 = 3.182446  # t_{0.975} with 3 dof, from printed tables
ADAM = (0.70, 0.71, 0.72, 0.73)
UP = (0.80, 0.82, 0.84, 0.86)  # minus ADAM: +10, +11, +12, +13 pp
DOWN = (0.62, 0.60, 0.61, 0.64)  # -8, -11, -11, -9 pp
EVEN = (0.75, 0.68, 0.72, 0.73)  # +5, -3, 0, 0 pp


def _runs(method: str, accuracies: tuple[float, ...], loss: float, meta_seed: int | None = None,
          diverged_seeds: tuple[int, ...] = ()) -> list[Trajectory]:
    return [Trajectory(SPEC.with_seed(seed), method, 0.01, torch.ones(3),
                       {"train_loss": loss, "test_loss": loss, "test_accuracy": acc}, seed in diverged_seeds,
                       meta_seed=meta_seed)
            for seed, acc in zip(SEEDS, accuracies, strict=True)]


@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (19, 2.093),
                                              (29, 2.045), (200, 1.972), (1000, 1.962), (10**6, 1.960)])
def test_t_quantile_matches_printed_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-t_quantile(0.975, df), abs=1e-12)


def test_t_quantile_is_exact_where_closed_forms_exist_and_continuous_at_the_expansion():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)  # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12)
    assert t_quantile(0.995, 3) == pytest.approx(5.840909, abs=1e-6)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)
    exact, expanded = t_quantile(0.975, EXACT_T_MAX_DF), t_quantile(0.975, EXACT_T_MAX_DF + 1)
    assert exact == pytest.approx(1.9718962, abs=1e-7) and expanded == pytest.approx(1.9718365, abs=1e-7)
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(0.975, 0)


def test_paired_leaves_out_non_finite_pairs_and_needs_two_for_an_interval():
    stat = paired([1.0, math.nan, 3.0, math.inf], [0.0, 0.0, 1.0, 1.0])  # differences 1 and 2: sample std 0.5 ** 0.5
    assert (stat.n, stat.mean, stat.ours, stat.reference) == (2, 1.5, 2.0, 0.5)
    assert (stat.low, stat.high) == pytest.approx((1.5 - 12.706205 / 2, 1.5 + 12.706205 / 2), abs=1e-5)
    single = paired([2.0, math.nan], [1.0, 1.0], higher_is_better=False)
    assert single.n == 1 and single.losses == 1 and math.isnan(single.low) and single.verdict == "n/a"


def test_paired_rows_better_worse_tie_with_hand_computed_intervals():
    trajectories = (_runs("adam", ADAM, 1.0) + _runs("up", UP, 0.1) + _runs("down", DOWN, 10.0)
                    + _runs("even", EVEN, 1.0))
    rows = {r["method"]: r for r in paired_rows(trajectories, "adam", ["up", "down", "even"])}
    assert set(rows) == {"up", "down", "even"}
    assert all(r["pairs"] == 4 and r["meta_seed"] is None for r in rows.values())

    up = rows["up"]  # diffs 10..13: mean 11.5, sample std sqrt(5/3)
    half = T3 * math.sqrt(5 / 3) / 2
    assert up["accuracy_pct_diff"] == pytest.approx(11.5)
    assert (up["accuracy_pct_ci_low"], up["accuracy_pct_ci_high"]) == pytest.approx((11.5 - half, 11.5 + half),
                                                                                  abs=1e-5)
    assert (up["accuracy_pct"], up["reference_accuracy_pct"]) == pytest.approx((83.0, 71.5))
    assert (up["accuracy_pct_wins"], up["accuracy_pct_losses"], up["accuracy_pct_ties"]) == (4, 0, 0)
    assert up["accuracy_pct_verdict"] == "better"
    assert (up["log10_loss_diff"], up["log10_loss_ci_low"], up["log10_loss_ci_high"]) == pytest.approx((-1, -1, -1))
    assert up["log10_loss_wins"] == 4 and up["log10_loss_verdict"] == "better"  # lower loss wins

    down = rows["down"]  # diffs -8, -11, -11, -9: mean -9.75, sample std 1.5
    half = T3 * 1.5 / 2
    assert (down["accuracy_pct_diff"], down["accuracy_pct_ci_low"], down["accuracy_pct_ci_high"]) == pytest.approx(
        (-9.75, -9.75 - half, -9.75 + half), abs=1e-5)
    assert (down["accuracy_pct_wins"], down["accuracy_pct_losses"]) == (0, 4)
    assert down["accuracy_pct_verdict"] == "worse"
    assert down["log10_loss_diff"] == pytest.approx(1.0) and down["log10_loss_verdict"] == "worse"

    even = rows["even"]  # diffs 5, -3, 0, 0: mean 0.5, sample std sqrt(11)
    half = T3 * math.sqrt(11) / 2
    assert (even["accuracy_pct_diff"], even["accuracy_pct_ci_low"], even["accuracy_pct_ci_high"]) == pytest.approx(
        (0.5, 0.5 - half, 0.5 + half), abs=1e-5)
    assert (even["accuracy_pct_wins"], even["accuracy_pct_losses"], even["accuracy_pct_ties"]) == (1, 1, 2)
    assert even["accuracy_pct_verdict"] == "tie"
    assert even["log10_loss_ties"] == 4 and even["log10_loss_verdict"] == "tie"

    table = paired_table(list(rows.values()), "adam")
    assert "| quadratic-dim5 | up | — | 4 | 83.0 / 71.5 | +11.5 [+9.4, +13.6] | 4/0/0 | better |" in table
    assert "| even | — | 4 | 72.0 / 71.5 | +0.5 [-4.8, +5.8] | 1/1/2 | tie |" in table
    assert "Student t with pairs − 1 dof" in table


def test_diverged_runs_are_counted_and_their_pairs_left_out():
    trajectories = _runs("adam", ADAM, 1.0, diverged_seeds=(101,)) + _runs("up", UP, 0.1, diverged_seeds=(104,))
    (row,) = paired_rows(trajectories, "adam", ["up"])
    assert (row["pairs"], row["diverged"], row["reference_diverged"]) == (2, 1, 1)
    assert row["accuracy_pct_diff"] == pytest.approx(11.5)  # seeds 102 and 103: +11, +12
    assert row["accuracy_pct_ci_low"] == pytest.approx(11.5 - 12.706205 / 2, abs=1e-5)  # sample std 0.5 ** 0.5
    assert row["accuracy_pct_verdict"] == "better"
    assert "| 1 / 1 |" in paired_table([row], "adam")


def test_several_meta_seeds_get_a_row_each_and_mean_std_over_them():
    trajectories = (_runs("adam", ADAM, 1.0) + _runs("ff", UP, 0.1, meta_seed=0)
                    + _runs("ff", DOWN, 10.0, meta_seed=1))
    rows = paired_rows(trajectories, "adam", ["ff"])
    assert [r["meta_seed"] for r in rows] == [0, 1, "all"]
    assert [r["accuracy_pct_verdict"] for r in rows[:2]] == ["better", "worse"]
    total = rows[2]  # per-meta-seed mean differences +11.5 and -9.75; mean accuracies 83.0 and 61.75
    assert (total["accuracy_pct_diff"], total["accuracy_pct_diff_std"]) == pytest.approx((0.875, 10.625))
    assert (total["accuracy_pct"], total["accuracy_pct_std"]) == pytest.approx((72.375, 10.625))
    assert total["reference_accuracy_pct"] == pytest.approx(71.5)
    assert (total["log10_loss_diff"], total["log10_loss_diff_std"]) == pytest.approx((0.0, 1.0))
    assert (total["meta_seeds"], total["pairs"]) == (2, 8)
    assert (total["accuracy_pct_wins"], total["accuracy_pct_losses"]) == (4, 4)
    assert total["accuracy_pct_verdict"] == "better 1, worse 1" and math.isnan(total["accuracy_pct_ci_low"])
    assert "| ff | mean ± std of 2 | 8 | 72.4 ± 10.6 / 71.5 | +0.9 ± 10.6 | 4/4/0 | better 1, worse 1 |" in (
        paired_table(rows, "adam"))

    summary = markdown_table(trajectories)  # per method: mean ± std over meta-seeds of per-meta-seed means
    assert "| quadratic-dim5 | ff | 0.01 | 5.05 ± 5 | 72.4 ± 10.6 | 2 meta-seeds | 0/8 |" in summary
    assert "| quadratic-dim5 | adam | 0.01 | 1 ± 0 | 71.5 ± 1.1 | test seeds | 0/4 |" in summary
