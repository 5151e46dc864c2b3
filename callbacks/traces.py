"""Per-inner-step traces of the learned rule's info (e.g. Opt2Vec's lr scale and momentum) on meta-test tasks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

from callbacks.meta_test import MetaTestCallback, learned_trajectories, meta_test_stem, tensorboard
from lightning_l2o.evaluation import Trajectory
from lightning_l2o.reporting import plot_traces, save_figure


class OptimizerTraces(MetaTestCallback):
    """Plots ``keys`` of the learned rule's info against the inner step, per task family.

    Every run adds a figure (TensorBoard ``<stage>/traces`` and ``<run>/meta_test/<stage>_step<N>_traces.png``).
    In ``validate`` and ``test`` runs, the per-family mean of each key is also logged as scalars
    ``<stage>_traces/<key>/<family>`` indexed by inner step.
    """

    def __init__(self, keys: Sequence[str] = ("lr_scale", "momentum")) -> None:
        self.keys = list(keys)

    def on_meta_test_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, trajectories: list[Trajectory]
    ) -> None:
        learned = [t for t in learned_trajectories(pl_module, trajectories) if all(k in t.infos for k in self.keys)]
        fig = plot_traces(learned, self.keys)
        if fig is None:
            return
        stem, step = meta_test_stem(trainer, stage)
        save_figure(fig, stem.with_name(f"{stem.name}_traces.png"))
        writer = tensorboard(trainer)
        if writer is not None:
            writer.add_figure(f"{stage}/traces", fig, global_step=step)
            if trainer.state.fn != "fit":
                self._log_scalars(writer, stage, learned)
        plt.close(fig)

    def _log_scalars(self, writer, stage: str, trajectories: list[Trajectory]) -> None:
        for key in self.keys:
            by_family: dict[str, list[torch.Tensor]] = defaultdict(list)
            for t in trajectories:
                by_family[t.spec.family].append(t.infos[key].reshape(len(t.infos[key]), -1).mean(1))
            for family, series in by_family.items():
                length = min(len(s) for s in series)
                mean = torch.stack([s[:length] for s in series]).mean(0)
                for step, value in enumerate(mean.tolist()):
                    writer.add_scalar(f"{stage}_traces/{key}/{family}", value, global_step=step)
