"""Lightning DataModules that sample optimizee tasks."""

from datamodules.task_datamodule import TaskDataModule

__all__ = ["TaskDataModule"]
