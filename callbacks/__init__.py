"""Callbacks that show what a learned optimizer does: loss curves, traces, embeddings, memory."""

from callbacks.embeddings import EmbeddingProjector
from callbacks.loss_curves import MetaTestLossCurves
from callbacks.memory import MemoryMonitor
from callbacks.traces import OptimizerTraces

__all__ = ["EmbeddingProjector", "MemoryMonitor", "MetaTestLossCurves", "OptimizerTraces"]
