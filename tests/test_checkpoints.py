"""Reading checkpoints: only registered update rules are built, bad files give one line naming the file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from lightning_l2o import FFMetaOptimizer, L2OModule, Opt2Vec, load_learned_optimizer
from lightning_l2o.checkpoints import CHECKPOINT_KEY, check_compatible, load_meta_optimizer, meta_optimizer_config
from lightning_l2o.cli import main as cli_main
from lightning_l2o.errors import ConfigError
from lightning_l2o.meta_optimizers.base import UPDATE_RULES, class_path
from lightning_l2o.report import main as report_main
from tests.conftest import REPO, tiny_datamodule, tiny_trainer


def _payload_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint whose meta-optimizer entry names ``subprocess.run`` with a shell command."""
    rule = {"class_path": "subprocess.run", "init_args": {"args": f"touch {marker}", "shell": True}}
    torch.save({CHECKPOINT_KEY: {"meta_optimizer": rule, "inner_state": None, "nonfinite_segments": 0},
                "state_dict": {}, "hyper_parameters": {"meta_optimizer": rule}, "pytorch-lightning_version": "2.6.0",
                "global_step": 0}, path)
    return path


def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path | str, str]]:
    """name -> (path, expected message) for a missing, truncated, garbage, foreign and remote checkpoint."""
    truncated, garbage, foreign = tmp_path / "truncated.ckpt", tmp_path / "garbage.ckpt", tmp_path / "foreign.ckpt"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(bytes(range(256)) * 40)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    return {
        "missing": (tmp_path / "missing.ckpt", "checkpoint not found"),
        "truncated": (truncated, "is not a readable checkpoint"),
        "garbage": (garbage, "is not a readable checkpoint"),
        "foreign": (foreign, "not written by lightning_l2o"),
        "url": ("https://example.com/ff.ckpt", "is a URL"),
    }


def test_a_checkpoint_naming_subprocess_run_is_refused_everywhere_and_runs_nothing(tmp_path, capsys, ff_checkpoint):
    marker = tmp_path / "pwned"
    payload = _payload_checkpoint(tmp_path / "payload.ckpt", marker)
    with pytest.raises(ConfigError, match="'subprocess.run', which is not an update rule"):
        load_learned_optimizer(payload, [nn.Parameter(torch.zeros(1))])
    with pytest.raises(SystemExit) as exit_info:
        report_main([f"--checkpoints={{evil: {payload}}}", f"--out_dir={tmp_path / 'report'}"])
    assert exit_info.value.code == 2 and "not an update rule" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["test", f"--config={REPO / 'configs/opt2vec.yaml'}", f"--ckpt_path={payload}",
                  f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"])
    assert exit_info.value.code == 2 and "holds a subprocess.run" in capsys.readouterr().err
    assert not marker.exists()


def test_rules_defined_outside_the_package_register_themselves(tmp_path):
    class Scaled(Opt2Vec):
        pass

    assert UPDATE_RULES[class_path(Scaled)] is Scaled
    module = L2OModule(Scaled(embedding_dim=4))
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(module, tiny_datamodule())
    trainer.save_checkpoint(tmp_path / "scaled.ckpt")
    rule = load_meta_optimizer(tmp_path / "scaled.ckpt")
    assert type(rule) is Scaled and meta_optimizer_config(rule) == meta_optimizer_config(module.meta_optimizer)


@pytest.mark.parametrize("name", ["missing", "truncated", "garbage", "foreign", "url"])
def test_bad_checkpoint_files_give_one_line_naming_the_file(tmp_path, capsys, ff_checkpoint, name):
    path, expected = _bad_files(tmp_path, ff_checkpoint)[name]
    with pytest.raises(ConfigError, match=expected) as err:
        load_learned_optimizer(path, [nn.Parameter(torch.zeros(1))])
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    commands = {
        "report": lambda: report_main([f"--checkpoints={{ff: {path}}}", f"--out_dir={tmp_path / 'report'}"]),
        "cli": lambda: cli_main(["test", f"--config={REPO / 'configs/ff.yaml'}", f"--ckpt_path={path}",
                                 f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"]),
    }
    for command in commands.values():
        with pytest.raises(SystemExit) as exit_info:
            command()
        err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert exit_info.value.code == 2 and err_lines == [err_lines[0]] and str(path) in err_lines[0]
        assert expected in err_lines[0]


class SignalAt(pl.Callback):
    """Sends ``signum`` to this process as outer step ``step`` starts."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def _fit(root: Path, max_steps: int, ckpt_path: Path | None = None, callbacks=(), every: int = 4) -> L2OModule:
    pl.seed_everything(0, verbose=False)
    module = L2OModule(Opt2Vec(), outer_lr=1e-2, cosine_schedule=True)
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=every, save_top_k=0)
    trainer = tiny_trainer(root, max_steps=max_steps, enable_checkpointing=True, callbacks=[checkpoint, *callbacks])
    trainer.fit(module, tiny_datamodule(), ckpt_path=ckpt_path)
    return module


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_fit_leaves_last_ckpt_at_its_final_step(tmp_path):
    _fit(tmp_path, max_steps=7, every=5)
    assert _step(tmp_path / "last.ckpt") == 7


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_fit_saves_its_last_completed_step_and_resumes_exactly(tmp_path, signum):
    straight = _fit(tmp_path / "a", max_steps=12)
    sigint_handler = signal.getsignal(signal.SIGINT)
    if signum == signal.SIGTERM:
        with pytest.raises(SIGTERMException):
            _fit(tmp_path / "b", max_steps=12, callbacks=[SignalAt(6, signum)])
    else:
        _fit(tmp_path / "b", max_steps=12, callbacks=[SignalAt(6, signum)])
    assert _step(tmp_path / "b" / "last.ckpt") == 7  # the step that was running when the signal came completed
    assert signal.getsignal(signal.SIGINT) is sigint_handler  # restored
    resumed = _fit(tmp_path / "b", max_steps=12, ckpt_path=tmp_path / "b" / "last.ckpt")
    for p, q in zip(straight.meta_optimizer.parameters(), resumed.meta_optimizer.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_of_another_meta_optimizer_is_refused_by_the_cli(tmp_path, capsys, ff_checkpoint):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["test", f"--config={REPO / 'configs/opt2vec.yaml'}", f"--ckpt_path={ff_checkpoint}",
                  f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "holds a lightning_l2o.meta_optimizers.ff.FFMetaOptimizer" in err
    assert "use the config the checkpoint was trained with" in err


def test_a_checkpoint_resumes_under_other_execution_options_but_not_another_architecture():
    saved = meta_optimizer_config(FFMetaOptimizer(hidden_dim=8, num_layers=1))
    check_compatible(saved, FFMetaOptimizer(hidden_dim=8, num_layers=1, chunk_size=64, network_dtype="bfloat16"))
    with pytest.raises(ConfigError, match="hidden_dim: checkpoint 8, config 16"):
        check_compatible(saved, FFMetaOptimizer(hidden_dim=16, num_layers=1, chunk_size=64))
