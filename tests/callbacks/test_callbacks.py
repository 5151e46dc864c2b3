import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import EmbeddingProjector, MemoryMonitor, MetaTestLossCurves, OptimizerTraces
from lightning_l2o import L2OModule, Opt2Vec
from tests.conftest import tiny_datamodule, tiny_trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Fit 4 steps with validation every 2, then test: all callbacks on, logging to TensorBoard."""
    pl.seed_everything(0, verbose=False)
    tmp_path = tmp_path_factory.mktemp("callbacks")
    logger = TensorBoardLogger(tmp_path, name="run")
    callbacks = [MetaTestLossCurves(), OptimizerTraces(), EmbeddingProjector(every_n_steps=5), MemoryMonitor()]
    trainer = tiny_trainer(tmp_path, max_steps=4, logger=logger, callbacks=callbacks, limit_val_batches=None,
                           val_check_interval=2, check_val_every_n_epoch=None)
    module = L2OModule(Opt2Vec(), lr_grid=[0.01, 0.1])
    datamodule = tiny_datamodule()
    trainer.fit(module, datamodule)
    trainer.test(module, datamodule)
    return trainer, logger


def test_loss_curves_and_results_are_written_and_logged(run):
    _trainer, logger = run
    out = logger.log_dir + "/meta_test"
    with open(f"{out}/test_step4_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"opt2vec", "adam", "adamw", "sgd_momentum"}
    assert len(rows) == 4 * 4  # 2 test architectures x 2 seeds x 4 methods
    assert all(r["diverged"] == "False" and float(r["train_loss"]) > 0 for r in rows)
    with open(f"{out}/val_step2_curves.csv") as f:
        curve = list(csv.DictReader(f))
    assert len(curve) == 4 * 15  # 1 val task x 4 methods x 15 inner steps
    for name in ("val_step2_loss_curves.png", "val_step4_traces.png", "test_step4_loss_curves.png"):
        assert Path(out, name).stat().st_size > 1000
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"val/loss_curves", "val/traces", "test/loss_curves"} <= set(events.Tags()["images"])


def test_traces_are_scalars_per_inner_step_in_test(run):
    _, logger = run
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0}).Reload()
    trace = events.Scalars("test_traces/lr_scale/quadratic")
    assert [e.step for e in trace] == list(range(15))
    assert all(0.1 <= e.value <= 10 for e in trace)
    assert "test_traces/momentum/quadratic" in events.Tags()["scalars"]


def test_embeddings_go_to_the_projector_with_metadata(run):
    _, logger = run
    metadata = sorted(Path(logger.log_dir).rglob("metadata.tsv"))
    assert len(metadata) == 3  # validation at steps 2 and 4, test
    lines = metadata[-1].read_text().splitlines()
    assert lines[0].split("\t") == ["family", "task", "inner_step", "loss"]
    assert len(lines) - 1 == 4 * 3  # 4 test tasks x steps 0, 5, 10
    tensors = metadata[-1].with_name("tensors.tsv").read_text().splitlines()
    assert len(tensors) == 12 and len(tensors[0].split("\t")) == 16


def test_memory_is_logged_per_epoch(run):
    _, logger = run
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0}).Reload()
    peaks = [e.value for e in events.Scalars("memory/peak_rss_mb")]
    assert peaks and all(50 < p < 20_000 for p in peaks)
    assert peaks == sorted(peaks)
