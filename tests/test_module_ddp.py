"""L2OModule on Lightning's DDP: two gloo processes on the CPU, run as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SCRIPT = '''
import os, signal, sys
from dataclasses import replace

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_l2o import L2OModule, Opt2Vec
from lightning_l2o.estimators import TruncatedBackprop
from lightning_l2o.unroll import InnerState
from tests.conftest import tiny_datamodule

out, max_steps, ckpt_path, poison_at, kill_at = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None, *map(int, sys.argv[4:6])
final_fraction = float(sys.argv[6])


class Faults(pl.Callback):
    """Rank 1's optimizee turns NaN once, as outer step ``poison_at`` starts (a skipped segment does not advance
    the step); rank 0 kills both ranks at ``kill_at``."""

    poisoned = False

    def on_train_batch_start(self, trainer, module, segments, batch_idx):
        if trainer.global_step == poison_at and trainer.global_rank == 1 and not self.poisoned:
            self.poisoned = True
            state = InnerState.start(segments[0].task, module.meta_optimizer)
            module._inners = [replace(state, params=torch.full_like(state.params, float("nan")))]
        if trainer.global_step == kill_at and trainer.global_rank == 0:
            os.killpg(0, signal.SIGKILL)


class Report(pl.Callback):
    def on_train_end(self, trainer, module):
        torch.save({"params": [p.detach() for p in module.meta_optimizer.parameters()],
                    "nonfinite": module.nonfinite_segments, "uncounted": module.uncounted_segments,
                    "batches": trainer.fit_loop.total_batch_idx + 1}, f"{out}/rank{trainer.global_rank}.pt")


pl.seed_everything(0, verbose=False)
checkpoint = ModelCheckpoint(dirpath=out, save_last=True, every_n_train_steps=3, save_top_k=0)
trainer = pl.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_steps=max_steps, limit_val_batches=0,
                     num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=out, callbacks=[checkpoint, Faults(), Report()])
# final_fraction < 1: random horizons, so that one rank's segment can lie before the window while the other's does not
data = tiny_datamodule() if final_fraction == 1 else tiny_datamodule(random_horizon_after=0, random_horizon_min=0.5,
                                                                     random_horizon_max=2.5)
module = L2OModule(Opt2Vec(), TruncatedBackprop(final_fraction=final_fraction), outer_lr=1e-2, cosine_schedule=True)
trainer.fit(module, data, ckpt_path=ckpt_path)
'''


def _ddp_fit(tmp_path: Path, out: Path, max_steps: int, ckpt_path: Path | None = None, poison_at: int = -1,
             kill_at: int = -1, final_fraction: float = 1.0) -> int:
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    out.mkdir(exist_ok=True)
    args = [sys.executable, str(script), str(out), str(max_steps), str(ckpt_path or ""), str(poison_at), str(kill_at),
            str(final_fraction)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, check=False, cwd=REPO, env=env, timeout=240, start_new_session=True, capture_output=True, text=True)
    assert done.returncode == 0 or kill_at >= 0, done.stderr[-3000:]
    return done.returncode


def _params(out: Path, rank: int) -> list[torch.Tensor]:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)["params"]


def test_a_non_finite_segment_on_one_rank_is_skipped_on_both_and_the_ranks_stay_identical(tmp_path):
    out = tmp_path / "run"
    _ddp_fit(tmp_path, out, max_steps=8, poison_at=4)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["nonfinite"] for r in ranks] == [1, 1]
    for p, q in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(p, q)


def test_ranks_agree_to_skip_only_meta_batches_with_no_loss_in_the_window_on_any_rank(tmp_path):
    out = tmp_path / "run"
    _ddp_fit(tmp_path, out, max_steps=8, final_fraction=0.3)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["uncounted"] == ranks[1]["uncounted"] > 0
    assert ranks[0]["batches"] == 8 + ranks[0]["uncounted"]
    for p, q in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(p, q)


def test_a_ddp_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _ddp_fit(tmp_path, straight, max_steps=12)
    assert _ddp_fit(tmp_path, killed, max_steps=12, kill_at=7) != 0
    checkpoint = torch.load(killed / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6
    states = checkpoint["lightning_l2o"]["inner_states"]
    assert len(states) == 2 and states[0][0]["spec"]["seed"] != states[1][0]["spec"]["seed"]  # each rank's own optimizee
    _ddp_fit(tmp_path, killed, max_steps=12, ckpt_path=killed / "last.ckpt")
    for rank in (0, 1):
        for p, q in zip(_params(straight, 0), _params(killed, rank)):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
