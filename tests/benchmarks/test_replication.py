"""``benchmarks/replication.py``: the checkpoints a run keeps for later checkouts."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from lightning_l2o.checkpoints import load_meta_optimizer
from lightning_l2o.evaluation import _rule_digest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def replication(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("replication", REPO / "benchmarks" / "replication.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", tmp_path / "replication")
    monkeypatch.setattr(module, "REPO", tmp_path)
    return module


def test_a_kept_checkpoint_is_the_chosen_rule_and_report_falls_back_to_it(replication, ff_checkpoint, tmp_path):
    folder = replication.last_checkpoint("ff", "seed0").parent
    folder.mkdir(parents=True)
    shutil.copy(ff_checkpoint, folder / "last.ckpt")
    chosen = folder / "epoch=0-step=1.ckpt"
    shutil.copy(ff_checkpoint, chosen)
    kept = replication.keep("ff", "seed0")
    assert kept == replication.kept_checkpoint("ff", "seed0") and kept.stat().st_size < chosen.stat().st_size
    assert _rule_digest(load_meta_optimizer(kept)) == _rule_digest(load_meta_optimizer(chosen))  # same run-cache keys
    assert replication._checkpoints(["ff"], ["seed0"]) == {"ff": str(chosen)}
    shutil.rmtree(folder.parent)  # a later checkout: no run folder, the committed kept checkpoint
    assert replication._checkpoints(["ff"], ["seed0", "seed1"]) == {"ff": str(kept)}
    with pytest.raises(SystemExit, match="no last.ckpt or kept checkpoint of"):
        replication._checkpoints(["ff"], ["seed1"])
