"""Peak memory: process RSS (psutil) and, on GPU, peak CUDA memory."""

from __future__ import annotations

from typing import Any

import psutil
import pytorch_lightning as pl
import torch

MIB = 2**20


class MemoryMonitor(pl.Callback):
    """Samples the process RSS after every training batch and logs, at the end of every training and
    validation epoch, ``memory/peak_rss_mb`` (highest sample so far) and ``memory/rss_mb``; on a CUDA
    device also ``memory/peak_cuda_mb`` (``torch.cuda.max_memory_allocated``)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak_rss = 0

    def _sample(self) -> int:
        rss = self._process.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._sample()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module)

    def _log(self, pl_module: pl.LightningModule) -> None:
        rss = self._sample()
        pl_module.log("memory/rss_mb", rss / MIB)
        pl_module.log("memory/peak_rss_mb", self.peak_rss / MIB)
        if pl_module.device.type == "cuda":
            pl_module.log("memory/peak_cuda_mb", torch.cuda.max_memory_allocated(pl_module.device) / MIB)
