"""Optimizee tasks: functional, differentiable losses of a flat parameter vector."""

from __future__ import annotations

import inspect

from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks.base import Batch, ModuleTask, Task
from lightning_l2o.tasks.classifier import CNNTask, MLPTask
from lightning_l2o.tasks.quadratic import QuadraticTask
from lightning_l2o.tasks.regression import RegressionTask
from lightning_l2o.tasks.spec import Segment, TaskSpec

TASK_FAMILIES: dict[str, type[Task]] = {
    cls.family: cls for cls in (QuadraticTask, RegressionTask, MLPTask, CNNTask)
}


def build_task(spec: TaskSpec) -> Task:
    """Instantiate the task described by ``spec``; bad names or arch keys raise a ``ValueError`` naming them."""
    if spec.family not in TASK_FAMILIES:
        raise ConfigError(f"unknown task family '{spec.family}'; choose one of: {', '.join(TASK_FAMILIES)}")
    cls = TASK_FAMILIES[spec.family]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "spec")]
    unknown = sorted(set(spec.arch) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{spec.family}: unknown arch key(s) {unknown}; {spec.family} accepts: {', '.join(accepted) or 'none'}"
        )
    if spec.batch_size < 1 or spec.horizon < 1:
        raise ConfigError(f"{spec.name}: batch_size and horizon must be >= 1")
    return cls(spec, **spec.arch)


__all__ = ["TASK_FAMILIES", "Batch", "ModuleTask", "Segment", "Task", "TaskSpec", "build_task"]
