"""The command line: every shipped YAML runs, bad configs are reported by key, and fit resumes exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import ArgumentParser
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_l2o import L2OModule, Opt2Vec
from lightning_l2o.cli import main
from lightning_l2o.estimators import PersistentES, TruncatedBackprop
from lightning_l2o.meta_optimizers import (
    FFMetaOptimizer,
    LSTMMetaOptimizer,
    NFNMetaOptimizer,
    PNAMetaOptimizer,
    RelationalTransformerMetaOptimizer,
)
from tests.conftest import REPO, SHARED_DATA, tiny_datamodule, tiny_trainer

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
FAST = ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false"]
IMAGE_CONFIGS = {p.name for p in CONFIGS if "preset:" in p.read_text()}


def short_image_tasks(config: Path) -> list[str]:
    """A config on real images: the same YAML with 3-step horizons and one lr, so that a CPU runs it in seconds;
    tested on task 17 and another architecture (another width for an NFN, whose depth is fixed)."""
    other = "fashion_mnist-width8" if "NFNMetaOptimizer" in config.read_text() else "fashion_mnist-depth1"
    return ["--data.init_args.train_tasks=[{preset: 17, horizon: 3}]",  # an unquoted id works too
            "--data.init_args.val_tasks=[{preset: '17', horizon: 3}]",
            f"--data.init_args.test_tasks=[{{preset: '17', horizon: 3}}, {{preset: {other}, horizon: 3}}]",
            "--model.init_args.lr_grid=[0.01]"]


def _run(tmp_path: Path, *args: str) -> None:
    main([*args, f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_fits_validates_and_tests_through_the_cli(tmp_path, monkeypatch, config):
    extra = []
    if config.name in IMAGE_CONFIGS:
        if not (SHARED_DATA / "FashionMNIST").is_dir():
            pytest.skip(f"{config.name} trains on FashionMNIST, which is not in {SHARED_DATA}")
        monkeypatch.setenv("L2O_DATA_DIR", str(SHARED_DATA))
        extra = short_image_tasks(config)
    _run(tmp_path, "fit", f"--config={config}", *FAST, *extra)
    last = next(tmp_path.rglob("last.ckpt"))
    _run(tmp_path, "validate", f"--config={config}", f"--ckpt_path={last}", "--trainer.limit_val_batches=1", *extra)
    _run(tmp_path, "test", f"--config={config}", f"--ckpt_path={last}", "--trainer.limit_test_batches=2", *extra)
    results = sorted(tmp_path.rglob("test_step*_results.csv"))
    assert results, "test wrote no results table"
    assert "sgd_momentum" in results[-1].read_text() and "adam" in results[-1].read_text()


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--config={REPO / 'configs/opt2vec.yaml'}", "--print_config"])
    assert exit_info.value.code == 0
    assert "history_length: 5" in capsys.readouterr().out


def test_the_command_prints_no_warning_from_its_dependencies_imports():
    """torch_geometric's import calls torch.jit.script, which torch 2.14 deprecates with a FutureWarning."""
    result = subprocess.run([sys.executable, "-W", "default", "-m", "lightning_l2o", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--model.init_args.meta_optimizer.init_args.histroy_length=3", "histroy_length"),
        ("--model.init_args.outer_lr=fast", "outer_lr"),
        ("--model.init_args.meta_optimizer.init_args.history_length=0", "history_length must be > 0"),
        ("--data.init_args.unroll_length=0", "unroll_length"),
    ],
)
def test_bad_config_values_are_reported_by_key_in_one_line(tmp_path, capsys, override, expected):
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, "fit", f"--config={REPO / 'configs/opt2vec.yaml'}", override)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Seed set" not in line]
    assert len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize("rule", [FFMetaOptimizer, LSTMMetaOptimizer, PNAMetaOptimizer,
                                  RelationalTransformerMetaOptimizer, NFNMetaOptimizer])
def test_a_yaml_can_set_every_option_of_a_rule_and_of_its_base_classes(rule):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(rule, "rule")
    yaml_options = set(vars(parser.get_defaults().rule))
    assert yaml_options == rule.option_names()
    assert {"hidden_dim", "features", "adam_lr", "adam_schedule", "chunk_size"} <= yaml_options
    assert parser.parse_args(["--rule.adam_lr=0.01", "--rule.hidden_dim=8"]).rule.adam_lr == 0.01


def test_a_misspelt_key_names_where_it_was_given_and_abbreviations_are_refused(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text((REPO / "configs/opt2vec.yaml").read_text().replace("history_length: 5", "histroy_length: 5"))
    for args, expected in [
        ([f"--config={typo}"], f"'histroy_length' is not accepted (given in {typo})"),
        (["--model.init_args.meta_optimizer.init_args.histroy_length=3"],
         "(given on the command line: --model.init_args.meta_optimizer.init_args.histroy_length=3)"),
        (["--trainer.max_step=5"], "unrecognized arguments: --trainer.max_step=5"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            _run(tmp_path, "fit", f"--config={REPO / 'configs/opt2vec.yaml'}", *args)
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Seed set" not in line]
        assert exit_info.value.code == 2 and len(err) == 1 and expected in err[0], err


def test_a_task_list_on_the_command_line_replaces_the_yaml_list(capsys):
    with pytest.raises(SystemExit):
        main(["fit", f"--config={REPO / 'configs/opt2vec.yaml'}", "--print_config",
              "--data.init_args.train_tasks=[{family: quadratic, horizon: 7}]"])
    tasks = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["train_tasks"]
    assert [(t["family"], t["arch"], t["horizon"]) for t in tasks] == [("quadratic", {}, 7)]


class CrashAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


ESTIMATORS = {"truncated": TruncatedBackprop, "pes": lambda: PersistentES(num_pairs=2)}


def _fit(root: Path, max_steps: int, ckpt_path: str | None = None, crash_at: int | None = None,
         estimator: str = "truncated", meta_batch_size: int = 1) -> L2OModule:
    pl.seed_everything(0, verbose=False)
    module = L2OModule(Opt2Vec(), ESTIMATORS[estimator](), outer_lr=1e-2, cosine_schedule=True)
    callbacks = [ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=4, save_top_k=0)]
    callbacks += [CrashAt(crash_at)] if crash_at is not None else []
    trainer = tiny_trainer(root, max_steps=max_steps, enable_checkpointing=True, callbacks=callbacks)
    trainer.fit(module, tiny_datamodule(meta_batch_size=meta_batch_size), ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize("estimator, meta_batch_size", [("truncated", 1), ("pes", 1), ("pes", 3)])
def test_fit_killed_mid_run_resumes_to_the_same_meta_parameters(tmp_path, estimator, meta_batch_size):
    """Horizon 25 / unroll 10 / epoch 5: last.ckpt (step 4) lies mid-epoch and mid-task (second segment of
    the second task), so the resume must restore the stream position and the carried inner state (with PES also
    its particles, their accumulated perturbations and its random stream), of every meta-batch slot."""
    kwargs = {"estimator": estimator, "meta_batch_size": meta_batch_size}
    straight = _fit(tmp_path / "a", max_steps=12, **kwargs)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "b", max_steps=12, crash_at=7, **kwargs)
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4
    assert [len(states) for states in saved["lightning_l2o"]["inner_states"]] == [meta_batch_size]
    resumed = _fit(tmp_path / "b", max_steps=12, ckpt_path=str(tmp_path / "b" / "last.ckpt"), **kwargs)
    for p, q in zip(straight.meta_optimizer.parameters(), resumed.meta_optimizer.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert not all(torch.equal(p, q) for p, q in zip(Opt2Vec().parameters(), resumed.meta_optimizer.parameters()))


def test_cli_fit_resumes_from_the_last_checkpoint(tmp_path):
    config = f"--config={REPO / 'configs/opt2vec.yaml'}"
    _run(tmp_path, "fit", config, *FAST)
    last = next(tmp_path.rglob("last.ckpt"))
    _run(tmp_path, "fit", config, *FAST[1:], "--trainer.max_steps=6", f"--ckpt_path={last}")
    steps = [torch.load(p, weights_only=True)["global_step"] for p in tmp_path.rglob("last*.ckpt")]
    assert max(steps) == 6


def test_missing_dataset_files_name_the_folder_and_the_option(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "no_data"))
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, "fit", f"--config={REPO / 'configs/ff.yaml'}")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert str(tmp_path / "no_data" / "FashionMNIST" / "raw") in err and "download: true" in err


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_shipped_checkpointing_survives_a_crash_before_any_validation(tmp_path, config):
    """The configs' ModelCheckpoints, saving every 2 steps instead of every N: a crash at step 5 with no
    validation yet must leave last.ckpt at step 4 (a monitored checkpoint alone would defer every save)."""
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    checkpoints = []
    for entry in callbacks:
        if entry["class_path"].endswith("ModelCheckpoint"):
            args = dict(entry.get("init_args", {}))
            if "every_n_train_steps" in args:
                args["every_n_train_steps"] = 2
            checkpoints.append(ModelCheckpoint(dirpath=tmp_path, **args))
    trainer = tiny_trainer(tmp_path, max_steps=8, enable_checkpointing=True, callbacks=[*checkpoints, CrashAt(5)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(L2OModule(Opt2Vec()), tiny_datamodule())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 4


def test_ckpt_path_never_overrides_the_config(tmp_path, capsys):
    """The meta-optimizer must match the checkpoint (else the project's error); the run's settings come from the
    config and command line, not from the hyperparameters stored in the checkpoint."""
    config = f"--config={REPO / 'configs/opt2vec.yaml'}"
    _run(tmp_path / "fit", "fit", config, *FAST)
    last = next((tmp_path / "fit").rglob("last.ckpt"))
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, "test", config, f"--ckpt_path={last}", "--model.init_args.meta_optimizer.init_args.history_length=7")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "history_length: checkpoint 5, config 7" in err and "Traceback" not in err
    _run(tmp_path / "test", "test", config, f"--ckpt_path={last}", "--model.init_args.lr_grid=[0.5]",
         "--model.init_args.baselines=[adam]", "--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false")
    rows = next((tmp_path / "fit").rglob("test_step*_results.csv")).read_text().splitlines()
    adam = [row for row in rows if ",adam," in row]
    assert adam and all(",0.5," in row for row in adam) and not any("sgd_momentum" in row for row in rows)


def test_default_root_dir_holds_the_run_and_test_writes_beside_the_checkpoint(tmp_path, monkeypatch):
    elsewhere, root = tmp_path / "cwd", tmp_path / "root"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = f"--config={REPO / 'configs/opt2vec.yaml'}"
    main(["fit", config, *FAST, f"--trainer.default_root_dir={root}"])
    run = root / "lightning_logs" / "opt2vec" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "meta_test" / "val_step4_results.csv").is_file()
    assert not any(elsewhere.iterdir())
    main(["test", config, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--trainer.limit_test_batches=1",
          f"--trainer.default_root_dir={tmp_path / 'test_logs'}", "--trainer.enable_progress_bar=false"])
    assert (run / "meta_test" / "test_step4_results.csv").is_file()
    assert not list((tmp_path / "test_logs").rglob("meta_test"))
