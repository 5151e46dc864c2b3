"""The learned rule's embeddings on meta-test tasks, for TensorBoard's projector."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from callbacks.meta_test import MetaTestCallback, learned_trajectories, tensorboard
from lightning_l2o.evaluation import Trajectory


class EmbeddingProjector(MetaTestCallback):
    """Adds the ``embedding`` info of every ``every_n_steps``-th inner step to TensorBoard's projector.

    Metadata columns: task family, task, inner step and training loss. Each call gets a distinct
    ``global_step`` (TensorBoard's projector needs one per call).

    Args:
        every_n_steps: subsample the inner steps.
        max_points: at most this many points per call.
    """

    def __init__(self, every_n_steps: int = 5, max_points: int = 5000) -> None:
        self.every_n_steps, self.max_points = every_n_steps, max_points
        self._last_step = -1

    def on_meta_test_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str, trajectories: list[Trajectory]
    ) -> None:
        writer = tensorboard(trainer)
        learned = [t for t in learned_trajectories(pl_module, trajectories) if "embedding" in t.infos]
        if writer is None or not learned:
            return
        vectors, metadata = [], []
        for t in learned:
            steps = range(0, len(t.infos["embedding"]), self.every_n_steps)
            vectors.append(t.infos["embedding"][list(steps)])
            metadata += [[t.spec.family, t.spec.name, str(s), f"{float(t.losses[s]):.4g}"] for s in steps]
        matrix = torch.cat(vectors)[: self.max_points]
        self._last_step = max(trainer.global_step, self._last_step + 1)
        writer.add_embedding(
            matrix, metadata=metadata[: self.max_points], metadata_header=["family", "task", "inner_step", "loss"],
            tag=f"{stage}_embeddings", global_step=self._last_step,
        )
