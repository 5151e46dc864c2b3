"""The evaluation report on a tiny run: every method on every preset, no NaN where nothing diverged."""

from __future__ import annotations

import csv
import math
import multiprocessing
import time
from dataclasses import replace

import pytest
import torch

from lightning_l2o import FFMetaOptimizer, L2OModule, evaluation
from lightning_l2o.checkpoints import load_meta_optimizer
from lightning_l2o.errors import ConfigError
from lightning_l2o.estimators import TruncatedBackprop
from lightning_l2o.meta_optimizers import AdamW
from lightning_l2o.report import evaluation_report, main
from lightning_l2o.tasks import TaskSpec
from tests.conftest import REPO, SHARED_DATA, tiny_datamodule, tiny_trainer

PRESETS = ["cifar10-depth1", "cifar10-width8"]


def _checkpoint(tmp_path, name: str) -> str:
    module = L2OModule(FFMetaOptimizer(hidden_dim=8, num_layers=1), TruncatedBackprop("lookahead"))
    trainer = tiny_trainer(tmp_path / name, max_steps=2)
    trainer.fit(module, tiny_datamodule())
    path = tmp_path / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def _report(tmp_path, data_dir, checkpoints):
    return evaluation_report(
        checkpoints=checkpoints, tasks=PRESETS, seeds=[101, 102], steps=4, lr_grid=[0.001, 0.01],
        tuning_tasks=["cifar10-depth1"], val_seeds=[201], out_dir=str(tmp_path / "report"), data_dir=data_dir,
    )


def test_tiny_report_has_every_method_on_every_preset(tmp_path, fake_cifar10):
    trajectories = _report(tmp_path, str(fake_cifar10), {"ff": _checkpoint(tmp_path, "ff")})
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} >= {"results.md", "results.csv", "summary.csv", "paired.csv", "curves.csv",
                                              "loss_curves.png", "tensorboard"}
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {(r["architecture"], r["method"]) for r in rows} == {
        (p, m) for p in PRESETS for m in ("ff", "adam", "adamw", "sgd_momentum")}
    for row in rows:
        assert row["runs"] == "2"
        if row["diverged"] == "0":
            assert math.isfinite(float(row["final_loss_mean"])) and math.isfinite(float(row["test_accuracy_mean"]))
    table = (out / "results.md").read_text()
    assert all(p in table for p in PRESETS) and "± " in table
    assert "Δ test accuracy (pp) [95 % CI]" in table and table.count("| ff |") == 2 * 2  # summary + paired rows
    assert all(len(t.losses) == 4 for t in trajectories if not t.diverged)
    tuned = {t.method: t.lr for t in trajectories if t.method != "ff"}
    assert set(tuned.values()) <= {0.001, 0.01}


def test_a_diverging_learned_optimizer_is_reported_not_raised(tmp_path, fake_cifar10):
    ckpt = _checkpoint(tmp_path, "wild")
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["lightning_l2o"]["meta_optimizer"]["init_args"]["lr"] = 1e30  # steps of 1e30: certain divergence
    torch.save(checkpoint, ckpt)
    trajectories = _report(tmp_path, str(fake_cifar10), {"wild": ckpt})
    wild = [t for t in trajectories if t.method == "wild"]
    assert wild and all(t.diverged for t in wild)
    assert "| 2/2 |" in (tmp_path / "report" / "results.md").read_text()
    assert all(not t.diverged and math.isfinite(t.final_loss) for t in trajectories if t.method == "adam")


def test_a_list_of_checkpoints_is_one_method_over_meta_seeds_paired_with_adam(tmp_path, fake_cifar10):
    checkpoints = [_checkpoint(tmp_path, "ff0"), _checkpoint(tmp_path, "ff1")]
    trajectories = evaluation_report(
        checkpoints={"ff": checkpoints}, tasks=["cifar10-depth1"], seeds=[101, 102], steps=3, baselines=["adam"],
        lr_grid=[0.01], val_seeds=[201], out_dir=str(tmp_path / "report"), data_dir=str(fake_cifar10),
    )
    ff = [t for t in trajectories if t.method == "ff"]
    assert sorted((t.meta_seed, t.spec.seed) for t in ff) == [(0, 101), (0, 102), (1, 101), (1, 102)]
    assert all(t.meta_seed is None for t in trajectories if t.method == "adam")
    out = tmp_path / "report"
    runs = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["meta_seed"] for r in runs if r["method"] == "ff") == ["0", "0", "1", "1"]
    paired = list(csv.DictReader((out / "paired.csv").open()))
    assert [(r["method"], r["meta_seed"], r["pairs"]) for r in paired] == [("ff", "0", "2"), ("ff", "1", "2"),
                                                                           ("ff", "all", "4")]
    adam = {t.spec.seed: t.final["test_accuracy"] for t in trajectories if t.method == "adam"}
    for row in paired[:2]:
        ours = [t for t in ff if t.meta_seed == int(row["meta_seed"])]
        expected = sum(100 * (t.final["test_accuracy"] - adam[t.spec.seed]) for t in ours) / len(ours)
        assert float(row["accuracy_pct_diff"]) == pytest.approx(expected, abs=1e-9)
        assert row["accuracy_pct_verdict"] in {"better", "worse", "tie"}
    table = (out / "results.md").read_text()
    assert "| ff | mean ± std of 2 | 4 |" in table and "| 2 meta-seeds |" in table
    assert {r["method"]: r["meta_seeds"] for r in csv.DictReader((out / "summary.csv").open())} == {"ff": "2",
                                                                                                   "adam": "1"}


def test_report_rejects_an_empty_or_negative_learned_lr_grid(tmp_path, fake_cifar10):
    for grid in ([], [0.01, -1.0]):
        with pytest.raises(ConfigError, match="learned_lr_grid must be positive"):
            evaluation_report(tasks=PRESETS, learned_lr_grid=grid, data_dir=str(fake_cifar10), out_dir=str(tmp_path))


@pytest.fixture
def trained(monkeypatch) -> list[str]:
    """The method names of the runs :func:`evaluation.meta_test` actually trains (not read from a cache)."""
    names = []
    meta_test = evaluation.meta_test
    monkeypatch.setattr(evaluation, "meta_test", lambda rule, spec, **kw: names.append(kw["method"]) or meta_test(
        rule, spec, **kw))
    return names


def test_a_report_reads_the_runs_it_has_and_runs_only_a_new_checkpoint(tmp_path, fake_cifar10, trained):
    first, second = _checkpoint(tmp_path, "ff0"), _checkpoint(tmp_path, "ff1")

    def report(checkpoints, out):
        return evaluation_report(
            checkpoints={"ff": checkpoints}, tasks=["cifar10-depth1"], seeds=[101, 102], steps=3, baselines=["adam"],
            lr_grid=[0.01, 0.1], val_seeds=[201], out_dir=str(tmp_path / out), data_dir=str(fake_cifar10),
            cache_dir=str(tmp_path / "runs"))

    once = report([first], "one")
    assert sorted(trained) == ["adam"] * 4 + ["ff"] * 2  # 2 tuning runs, then 2 test seeds each
    trained.clear()
    again = report([first], "again")
    assert not trained
    assert [(t.method, t.lr, t.spec.seed, t.losses.tolist(), t.final) for t in again] == [
        (t.method, t.lr, t.spec.seed, t.losses.tolist(), t.final) for t in once]
    assert (tmp_path / "one" / "results.md").read_text() == (tmp_path / "again" / "results.md").read_text()
    both = report([first, second], "both")
    assert trained == ["ff", "ff"]  # the second checkpoint's two test runs, nothing else
    assert sorted((t.meta_seed, t.spec.seed) for t in both if t.method == "ff") == [(0, 101), (0, 102), (1, 101),
                                                                                    (1, 102)]


def test_a_cached_only_report_runs_nothing_and_pairs_the_seeds_both_sides_have(tmp_path, fake_cifar10, trained):
    checkpoint = _checkpoint(tmp_path, "ff")

    def report(checkpoints, seeds, out, lr_grid=(0.01, 0.1), **kw):
        return evaluation_report(
            checkpoints=checkpoints, tasks=["cifar10-depth1"], seeds=seeds, steps=3, baselines=["adam"],
            lr_grid=lr_grid, val_seeds=[201], out_dir=str(tmp_path / out), data_dir=str(fake_cifar10),
            cache_dir=str(tmp_path / "runs"), **kw)

    full = report({"ff": checkpoint}, [101], "first") + report({}, [102], "adam_only")
    trained.clear()
    partial = report({"ff": checkpoint}, [101, 102, 103], "partial", cached_only=True)
    assert not trained
    assert sorted((t.method, t.spec.seed) for t in partial) == [("adam", 101), ("adam", 102), ("ff", 101)]
    assert [(t.losses.tolist(), t.final) for t in sorted(partial, key=lambda t: (t.method, t.spec.seed))] == [
        (t.losses.tolist(), t.final) for t in sorted(full, key=lambda t: (t.method, t.spec.seed))]
    paired = list(csv.DictReader((tmp_path / "partial" / "paired.csv").open()))
    assert [(r["method"], r["pairs"]) for r in paired] == [("ff", "1")]
    with pytest.raises(ConfigError, match="1 of 2 tuning runs are not in"):
        report({}, [101], "other_grid", lr_grid=[0.01, 0.03], cached_only=True)
    with pytest.raises(ConfigError, match="none of the 1 test runs"):
        report({}, [104], "no_test_runs", cached_only=True)
    assert not trained


def test_a_learned_lr_grid_tunes_each_checkpoints_base_lr_on_the_validation_seeds(tmp_path, fake_cifar10, trained):
    checkpoints = [_checkpoint(tmp_path, "ff0"), _checkpoint(tmp_path, "ff1")]
    grid = [1e-4, 0.01, 1.0]
    trajectories = evaluation_report(
        checkpoints={"ff": checkpoints}, tasks=["cifar10-depth1"], seeds=[101, 102], steps=3, baselines=["adam"],
        lr_grid=[0.01], learned_lr_grid=grid, val_seeds=[201], out_dir=str(tmp_path / "report"),
        data_dir=str(fake_cifar10))
    assert sorted(trained) == ["adam"] * 3 + ["ff"] * (2 * len(grid) + 2 * 2)  # tuning runs, then the test seeds
    validation = TaskSpec(preset="cifar10-depth1", horizon=3, data_dir=str(fake_cifar10), seed=201)
    for meta_seed, path in enumerate(checkpoints):
        rule = load_meta_optimizer(path)
        scores = {lr: evaluation.log10_loss(evaluation.meta_test(rule, validation, lr=lr, method="ff").final_loss)
                  for lr in grid}
        assert len(set(scores.values())) == len(grid)  # the base lr changes the rule's steps
        chosen = {t.lr for t in trajectories if t.method == "ff" and t.meta_seed == meta_seed}
        assert chosen == {min(grid, key=scores.get)}


def test_cached_runs_are_not_reused_for_other_weights_or_code(tmp_path, monkeypatch, trained):
    cache = evaluation.TrajectoryCache(tmp_path)
    spec, rule = TaskSpec("quadratic", arch={"dim": 3}, horizon=5, seed=1), FFMetaOptimizer(hidden_dim=4, num_layers=1)
    cache.meta_test(rule, spec, "ff")
    cache.meta_test(rule, spec, "ff")
    assert trained == ["ff"]
    with torch.no_grad():
        rule.network.output_layer.bias += 1.0
    cache.meta_test(rule, spec, "ff")
    monkeypatch.setattr(evaluation, "_code_digest", lambda: "other source")
    cache.meta_test(rule, spec, "ff")
    assert trained == ["ff"] * 3 and len(list(tmp_path.iterdir())) == 3


def test_a_cached_run_is_kept_per_lr(tmp_path, trained):
    cache = evaluation.TrajectoryCache(tmp_path)
    spec, rule = TaskSpec("quadratic", arch={"dim": 3}, horizon=5, seed=1), FFMetaOptimizer(hidden_dim=4, num_layers=1)
    own = cache.meta_test(rule, spec, "ff")
    assert cache.meta_test(rule, spec, "ff", lr=rule.lr).losses.tolist() == own.losses.tolist()
    doubled = cache.meta_test(rule, spec, "ff", lr=2 * rule.lr)
    assert trained == ["ff", "ff"] and (own.lr, doubled.lr) == (rule.lr, 2 * rule.lr)
    assert doubled.losses.tolist() != own.losses.tolist()


def test_a_cached_run_is_read_under_another_method_name(tmp_path, trained):
    cache = evaluation.TrajectoryCache(tmp_path)
    spec, rule = TaskSpec("quadratic", arch={"dim": 3}, horizon=5, seed=1), FFMetaOptimizer(hidden_dim=4, num_layers=1)
    first = cache.meta_test(rule, spec, "ff")
    renamed = cache.meta_test(rule, spec, "ff_renamed")
    assert trained == ["ff"] and renamed.method == "ff_renamed"
    assert renamed.losses.tolist() == first.losses.tolist() and renamed.final_loss == first.final_loss


def _report_beside_another(cache_dir: str, out_dir: str, start, made) -> None:
    """A report started at the same moment as another on one ``cache_dir`` (a spawned process's target): puts the
    runs it made itself (not read) and every run of its report on ``made``."""
    mine = []
    meta_test = evaluation.meta_test

    def recording(rule, spec, **kw):
        mine.append((kw["method"], spec.seed, kw["lr"]))
        time.sleep(0.2)  # so that the two reports overlap
        return meta_test(rule, spec, **kw)

    evaluation.meta_test = recording
    start.wait()
    trajectories = evaluation_report(
        tasks=[TaskSpec("quadratic", arch={"dim": 5})], seeds=list(range(101, 107)), steps=20,
        baselines=["adam", "sgd_momentum"], lr_grid=[0.01, 0.1], val_seeds=[201, 202], out_dir=out_dir,
        cache_dir=cache_dir)
    made.put((mine, [(t.method, t.spec.seed, t.lr, t.losses.tolist()) for t in trajectories]))


def test_reports_side_by_side_on_one_cache_make_each_run_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, made = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_report_beside_another, args=(
        str(tmp_path / "runs"), str(tmp_path / f"report{i}"), start, made)) for i in range(2)]
    for process in processes:
        process.start()
    (first, first_runs), (second, second_runs) = made.get(timeout=300), made.get(timeout=300)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert not set(first) & set(second), "a run was made by both reports"
    assert len(set(first + second)) == len(first + second) == 8 + 12  # 2 x 2 x 2 tuning runs, 6 x 2 test runs
    assert first and second, "one report made every run: the other did not share the work"
    assert first_runs == second_runs and len(first_runs) == 12


def test_report_tunes_adamw_weight_decay_on_validation_seeds_and_tests_with_the_chosen_setting(tmp_path):
    """AdamW's (lr, weight decay) is chosen on the validation seeds, named in results.md, and its test runs are runs
    of AdamW at exactly that setting."""
    spec = TaskSpec("quadratic", arch={"dim": 5})
    trajectories = evaluation_report(
        tasks=[spec], seeds=[101, 102], steps=20, baselines=["adamw"], lr_grid=[0.03, 0.1],
        weight_decay_grid=[0.0, 3.0], val_seeds=[201, 202], out_dir=str(tmp_path))
    validation = {(lr, wd): sum(evaluation.log10_loss(evaluation.meta_test(
        AdamW(lr=lr, weight_decay=wd), replace(spec, horizon=20).with_seed(seed)).final_loss) for seed in (201, 202))
        for lr in (0.03, 0.1) for wd in (0.0, 3.0)}
    lr, wd = min(validation, key=validation.get)
    assert wd == 0.0
    assert f"adamw on quadratic: lr {lr:g}, weight decay 0." in (tmp_path / "results.md").read_text()
    for trajectory in trajectories:
        expected = evaluation.meta_test(AdamW(lr=lr, weight_decay=wd), trajectory.spec)
        assert torch.equal(trajectory.losses, expected.losses)
    assert len(list((tmp_path / "runs").glob("*.pt"))) == 2 * 4 + 2  # every (lr, weight decay) on 2 seeds, 2 tests


def test_report_refuses_a_negative_weight_decay(tmp_path):
    with pytest.raises(ConfigError, match="weight_decay_grid weight decays >= 0"):
        evaluation_report(tasks=[TaskSpec("quadratic", arch={"dim": 5})], seeds=[101], baselines=["adamw"],
                          weight_decay_grid=[-0.1], out_dir=str(tmp_path))


def test_report_rejects_test_seeds_among_validation_seeds(tmp_path, fake_cifar10):
    with pytest.raises(ConfigError, match="disjoint"):
        evaluation_report(tasks=PRESETS, seeds=[101], val_seeds=[101], data_dir=str(fake_cifar10),
                          out_dir=str(tmp_path))


def test_shipped_suite_config_runs_from_the_command_line(tmp_path, monkeypatch, capsys):
    if not (SHARED_DATA / "FashionMNIST").is_dir():
        pytest.skip(f"configs/eval/suite.yaml evaluates FashionMNIST presets; not in {SHARED_DATA}")
    monkeypatch.setenv("L2O_DATA_DIR", str(SHARED_DATA))
    main([f"--config={REPO / 'configs/eval/suite.yaml'}", "--tasks=[fashion_mnist-depth1]", "--seeds=[101]",
          "--steps=3", "--lr_grid=[0.01]", "--weight_decay_grid=[0.01]", "--tuning_tasks=[fashion_mnist-depth1]",
          "--val_seeds=[201]", f"--out_dir={tmp_path}", f"--checkpoints={{ff: {_checkpoint(tmp_path, 'ff')}}}"])
    results = (tmp_path / "results.md").read_text()
    assert "fashion_mnist-depth1" in results and "adamw on cnn: lr 0.01, weight decay 0.01" in results
    assert "sgd_momentum" in capsys.readouterr().out


def test_task_entries_and_a_shipped_optimizer_are_evaluated_from_the_command_line(tmp_path):
    """Tasks given as data-config entries (not presets) take ``steps`` as their horizon; ``pretrained:<name>``
    names a learned optimizer."""
    quadratic = "{family: quadratic, arch: {dim: 3}}"
    main([f"--tasks=[{quadratic}, {{family: regression, arch: {{inputs: 3}}, batch_size: 8}}]", "--seeds=[101, 102]",
          "--steps=5", "--lr_grid=[0.01]", "--val_seeds=[201]", "--baselines=[adam]", f"--out_dir={tmp_path}",
          "--checkpoints={opt2vec: pretrained:opt2vec_mixed}"])
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {(r["task"], r["method"], r["steps"]) for r in rows} == {
        (f"{family}_s{seed}", method, "5") for family in ("quadratic-dim3", "regression-inputs3")
        for seed in (101, 102) for method in ("opt2vec", "adam")}
    assert "regression-inputs3 | opt2vec | — | 2 |" in (tmp_path / "results.md").read_text()


def test_shipped_small_tasks_config_runs_from_the_command_line(tmp_path):
    main([f"--config={REPO / 'configs/eval/small_tasks.yaml'}", "--seeds=[101, 102]", "--steps=3", "--val_seeds=[201]",
          f"--out_dir={tmp_path}", "--checkpoints={opt2vec: pretrained:opt2vec_mixed}"])
    assert "mlp-digits-hidden64x32 | opt2vec | — | 2 |" in (tmp_path / "results.md").read_text()


def test_cached_only_from_the_command_line_reads_a_finished_report_and_refuses_an_empty_cache(tmp_path, capsys):
    args = ["--tasks=[{family: quadratic, arch: {dim: 3}}]", "--seeds=[101, 102]", "--steps=5", "--lr_grid=[0.01]",
            "--val_seeds=[201]", "--baselines=[adam]", f"--cache_dir={tmp_path / 'runs'}"]
    main([*args, f"--out_dir={tmp_path / 'full'}"])
    main([*args, f"--out_dir={tmp_path / 'read'}", "--cached_only=true"])
    assert "cached_only: 2 of 2 test runs are in" in capsys.readouterr().out
    assert (tmp_path / "read" / "results.csv").read_text() == (tmp_path / "full" / "results.csv").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"--cache_dir={tmp_path / 'empty'}", f"--out_dir={tmp_path / 'none'}", "--cached_only=true"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "1 of 1 tuning runs are not in" in err and "Traceback" not in err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([f"--checkpoints={{ff: {tmp_path / 'nope.ckpt'}}}", f"--out_dir={tmp_path}"])
    assert exit_info.value.code == 2 and "checkpoint not found" in capsys.readouterr().err


def test_checkpoint_lists_are_parsed_from_the_command_line_and_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([f"--checkpoints={{ff: [{tmp_path / 'a.ckpt'}, {tmp_path / 'b.ckpt'}]}}", f"--out_dir={tmp_path}"])
    assert f"checkpoint not found: {tmp_path / 'a.ckpt'};" in capsys.readouterr().err  # the first path, not the list
    for given in ("[]", f"[{tmp_path / 'a.ckpt'}, {tmp_path / 'a.ckpt'}]"):
        with pytest.raises(SystemExit):
            main([f"--checkpoints={{ff: {given}}}", f"--out_dir={tmp_path}"])
        assert "checkpoints.ff must be one path or a list of distinct paths" in capsys.readouterr().err


def test_learned_weights_survive_the_round_trip(tmp_path):
    from lightning_l2o.checkpoints import load_meta_optimizer

    rule = load_meta_optimizer(_checkpoint(tmp_path, "ff"))
    assert isinstance(rule, FFMetaOptimizer) and all(torch.isfinite(p).all() for p in rule.parameters())
