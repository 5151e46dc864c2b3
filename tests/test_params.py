import torch

from lightning_l2o.params import ParamLayout, ParamSpace


def test_flatten_unflatten_round_trip():
    tensors = {"w": torch.randn(3, 4), "b": torch.randn(4), "s": torch.randn(())}
    layout = ParamLayout.from_tensors(tensors.items())
    flat = ParamLayout.flatten(list(tensors.values()))
    assert flat.shape == (layout.total,) == (17,)
    views = layout.unflatten(flat)
    for name, t in tensors.items():
        assert torch.equal(views[name], t)


def test_unflatten_is_differentiable():
    layout = ParamLayout(("a", "b"), (torch.Size([2, 2]), torch.Size([3])))
    flat = torch.randn(7, requires_grad=True)
    views = layout.unflatten(flat)
    (views["a"].sum() * 2 + views["b"].sum()).backward()
    assert flat.grad.tolist() == [2.0] * 4 + [1.0] * 3


def test_tasks_of_one_architecture_share_one_space_built_once():
    from lightning_l2o.tasks import TaskSpec, build_task

    spec = TaskSpec("mlp", arch={"hidden": [5]}, dataset="digits")
    a, b = build_task(spec.with_seed(1)), build_task(spec.with_seed(2))
    assert a.space is b.space and a.space.graph is b.space.graph
    assert build_task(TaskSpec("mlp", arch={"hidden": [6]}, dataset="digits")).space is not a.space
    assert a.space.segment_ids.tolist() == a.layout.segment_ids().tolist()


def test_segment_mean_is_each_tensors_mean_for_vectors_and_matrices():
    tensors = [("w", torch.randn(3, 4)), ("b", torch.randn(3))]
    space = ParamSpace.of_layout(ParamLayout.from_tensors(tensors))
    flat = ParamLayout.flatten([t for _, t in tensors])
    expected = torch.stack([t.mean() for _, t in tensors])
    torch.testing.assert_close(space.segment_mean(flat), expected)
    torch.testing.assert_close(space.segment_mean(torch.stack([flat, 2 * flat], 1)), torch.stack([expected, 2 * expected], 1))


def test_fans_of_convolutions_linears_and_biases():
    layout = ParamLayout.from_tensors([("conv", torch.zeros(32, 16, 3, 3)), ("conv_bias", torch.zeros(32)),
                                       ("linear", torch.zeros(10, 32)), ("scalar", torch.zeros(()))])
    space = ParamSpace.of_layout(layout)
    assert space.fans.tolist() == [[144.0, 32.0], [1.0, 32.0], [32.0, 10.0], [1.0, 1.0]]
    assert space.fans is space.fans  # built once per space
