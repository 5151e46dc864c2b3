import math

import pytest
import torch
from torch import nn

from lightning_l2o.errors import ConfigError
from lightning_l2o.tasks import TaskSpec, build_task

SPECS = [
    TaskSpec("quadratic", arch={"dim": 6}),
    TaskSpec("regression", arch={"inputs": 10}, batch_size=8),
    TaskSpec("mlp", dataset="digits", arch={"hidden": [16, 8]}, batch_size=8),
    TaskSpec("cnn", dataset="digits", arch={"channels": [4, 8]}, batch_size=8),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.family)
def test_task_loss_is_differentiable_and_reproducible(spec):
    task = build_task(spec)
    gen = task.generator()
    params = task.init_params(gen).requires_grad_()
    assert params.shape == (task.layout.total,)
    batch = task.sample_batch(gen)
    loss = task.loss(params, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss, params)
    assert grad.shape == params.shape and grad.abs().sum() > 0
    # Same seed -> same initial parameters and batches; another seed -> different ones.
    again = build_task(spec)
    gen2 = again.generator()
    assert torch.equal(again.init_params(gen2), params.detach())
    assert all(torch.equal(a, b) for a, b in zip(again.sample_batch(gen2), batch))
    other = build_task(spec.with_seed(spec.seed + 1))
    assert not torch.equal(other.init_params(other.generator()), params.detach())
    metrics = task.evaluate(params.detach())
    assert set(metrics) == {"train_loss", "test_loss", "test_accuracy"}
    assert math.isfinite(metrics["train_loss"])
    assert math.isfinite(metrics["test_accuracy"]) == task.has_accuracy


def test_quadratic_gradient_matches_closed_form():
    task = build_task(TaskSpec("quadratic", arch={"dim": 4}, seed=3))
    theta = torch.randn(4, requires_grad=True)
    (grad,) = torch.autograd.grad(task.loss(theta, ()), theta)
    assert torch.allclose(grad, 2 * task.W.T @ (task.W @ theta.detach() - task.y), atol=1e-5)


def test_mlp_functional_loss_matches_the_module():
    task = build_task(SPECS[2])
    params = task.init_params(task.generator())
    x, y = task.sample_batch(task.generator())
    net = task.module
    with torch.no_grad():
        for p, v in zip(net.parameters(), task.layout.unflatten(params).values()):
            p.copy_(v)
    assert torch.allclose(task.loss(params, (x, y)), nn.functional.cross_entropy(net(x), y), atol=1e-6)


def test_regression_is_linear_with_ten_inputs():
    task = build_task(TaskSpec("regression"))
    assert task.layout.shapes == (torch.Size([1, 10]), torch.Size([1]))


@pytest.mark.parametrize(
    "spec, message",
    [
        (TaskSpec("transformer"), "unknown task family 'transformer'"),
        (TaskSpec("quadratic", arch={"dims": 3}), "unknown arch key(s) ['dims']"),
        (TaskSpec("mlp", dataset="imagenet"), "unknown dataset 'imagenet'"),
        (TaskSpec("mlp"), "a dataset is required"),
        (TaskSpec("cnn", dataset="digits", arch={"channels": [4], "strides": [1, 2]}), "one positive stride per layer"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        build_task(spec)
