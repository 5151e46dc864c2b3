"""Meta-test loss curves and results: CSV and PNG in the run folder, figure and table in TensorBoard."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytorch_lightning as pl

from callbacks.meta_test import MetaTestCallback, meta_test_stem, tensorboard
from lightning_l2o.evaluation import Trajectory
from lightning_l2o.reporting import curve_rows, markdown_table, plot_loss_curves, result_rows, save_figure, write_csv


class MetaTestLossCurves(MetaTestCallback):
    """After each validation / test run, writes ``<run>/meta_test/<stage>_step<N>_{curves.csv,results.csv,
    results.md,loss_curves.png}`` and logs the figure and Markdown table to TensorBoard."""

    def on_meta_test_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, trajectories: list[Trajectory]
    ) -> None:
        stem, step = meta_test_stem(trainer, stage)
        out, name = stem.parent, stem.name
        write_csv(curve_rows(trajectories), out / f"{name}_curves.csv")
        write_csv(result_rows(trajectories), out / f"{name}_results.csv")
        table = markdown_table(trajectories)
        (out / f"{name}_results.md").write_text(table + "\n")
        fig = plot_loss_curves(trajectories)
        save_figure(fig, out / f"{name}_loss_curves.png")
        writer = tensorboard(trainer)
        if writer is not None:
            writer.add_figure(f"{stage}/loss_curves", fig, global_step=step)
            writer.add_text(f"{stage}/results", table, global_step=step)
        plt.close(fig)
