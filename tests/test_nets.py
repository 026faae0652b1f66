"""The MLP backbone: shapes, parameter count, time features, validation, a fit of a known field
(the U-Net: tests/test_images.py)."""

from __future__ import annotations

import itertools

import flowkit_nets
import pytest
import torch
from flowkit_nets.mlp import MLP
from flowkit_nets.unet import UNet

from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import BuildContext, Dataset
from flowkit.testing import build_component, check_component, make_manager


def test_registers_mlp_and_unet():
    added = {}

    class Recorder:
        def add(self, kind, name, cls):
            added[(kind, name)] = cls

    flowkit_nets.flowkit_register(Recorder())
    assert added == {("model", "mlp"): MLP, ("model", "unet"): UNet}
    check_component("model", MLP)
    check_component("model", UNet)


@pytest.mark.parametrize("shape", [(2,), (3, 4)])
def test_output_has_the_shape_of_x(shape):
    torch.manual_seed(0)
    net = MLP(MLP.Params(hidden=[16, 16]), data_shape=shape)
    x, t = torch.randn(5, *shape), torch.rand(5)
    out = net(x, t)
    assert out.shape == (5, *shape) and out.dtype == torch.float32
    # Each sample is processed independently: a batch of one gives the same row.
    assert torch.allclose(net(x[2:3], t[2:3]), out[2:3], atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "hidden", "time_features"), [((2,), [256, 256, 256], 0), ((3, 4), [8, 16], 0), ((2,), [32], 5)]
)
def test_parameter_count(shape, hidden, time_features):
    net = MLP(MLP.Params(hidden=hidden, time_features=time_features), data_shape=shape)
    dim = 1
    for size in shape:
        dim *= size
    widths = [dim + 1 + 2 * time_features, *hidden, dim]
    expected = sum(w_in * w_out + w_out for w_in, w_out in itertools.pairwise(widths))
    assert sum(p.numel() for p in net.parameters()) == expected
    if (shape, hidden, time_features) == ((2,), [256, 256, 256], 0):
        assert expected == 133_122  # the default 2D model: 3 * 256 + 256 + 2 * (256^2 + 256) + 256 * 2 + 2


def test_default_parameters():
    params = MLP.Params()
    assert (params.hidden, params.activation, params.time_features) == ([256, 256, 256], "silu", 0)


@pytest.mark.parametrize("time_features", [0, 4])
def test_output_depends_on_t(time_features):
    torch.manual_seed(1)
    net = MLP(MLP.Params(hidden=[32, 32], time_features=time_features), data_shape=(2,))
    x = torch.randn(64, 2)
    change = (net(x, torch.zeros(64)) - net(x, torch.full((64,), 0.5))).abs().mean()
    assert change > 1e-3


def test_time_features_are_sin_cos_of_doubling_frequencies():
    net = MLP(MLP.Params(hidden=[4], time_features=3), data_shape=(2,))
    assert torch.allclose(net.frequencies, torch.pi * torch.tensor([1.0, 2.0, 4.0]))
    first = net.net[0]
    assert first.in_features == 2 + 1 + 6
    # Reconstruct the first layer's input: [x, t, sin(f t), cos(f t)].
    x, t = torch.randn(3, 2), torch.tensor([0.0, 0.25, 1.0])
    angles = t[:, None] * net.frequencies
    inputs = torch.cat([x, t[:, None], torch.sin(angles), torch.cos(angles)], dim=1)
    expected = net.net[1:](first(inputs))
    assert torch.allclose(net(x, t), expected, atol=1e-6)


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu", "tanh"])
def test_activation_is_used(activation):
    net = MLP(MLP.Params(hidden=[4, 4], activation=activation), data_shape=(2,))
    expected = {"silu": torch.nn.SiLU, "relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "tanh": torch.nn.Tanh}
    assert isinstance(net.net[1], expected[activation]) and isinstance(net.net[3], expected[activation])


def test_invalid_parameters_name_the_parameter():
    with pytest.raises(ValueError, match=r"^hidden must list at least one layer width"):
        MLP.Params(hidden=[])
    with pytest.raises(ValueError, match=r"^hidden must hold positive int layer widths; got \[16, 0\]"):
        MLP.Params(hidden=[16, 0])
    with pytest.raises(ValueError, match="'activation' must be in"):
        MLP.Params(activation="elu")
    with pytest.raises(ValueError, match="'time_features' must be >= 0"):
        MLP.Params(time_features=-1)
    with pytest.raises(FlowkitError, match=r"^mlp needs a non-empty event shape of positive sizes, got \(\)"):
        MLP(data_shape=())


class _Shape(Dataset):
    def __init__(self, shape):
        super().__init__()
        self._shape = shape

    @property
    def shape(self):
        return self._shape

    def sample(self, n, generator=None, device=None):
        return torch.zeros(n, *self._shape)


def test_builds_from_a_pipeline_table_with_the_data_shape():
    manager = make_manager()
    context = BuildContext(source="<test>", dataset=_Shape((3, 4)))
    net = build_component(manager, "model", {"kind": "mlp", "hidden": [8], "activation": "tanh"}, context)
    assert isinstance(net, MLP) and net.data_shape == (3, 4)
    assert net(torch.zeros(2, 3, 4), torch.zeros(2)).shape == (2, 3, 4)
    with pytest.raises(ConfigError) as error:
        build_component(manager, "model", {"kind": "mlp", "hidden": [8, -2]}, context)
    assert str(error.value) == (
        "<test>: [model] key 'hidden': invalid value [8, -2]: hidden must hold positive int layer widths; "
        "got [8, -2]"
    )


def test_learns_a_linear_field():
    # Regression onto u_t(x) = (1 - t) A x: a small MLP fits it to 0.7% relative error in
    # 200 Adam steps (threshold 2%).
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    a = torch.tensor([[0.0, -1.0], [1.0, 0.5]])
    net = MLP(MLP.Params(hidden=[32, 32], time_features=2), data_shape=(2,))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        x = torch.randn(128, 2, generator=generator)
        t = torch.rand(128, generator=generator)
        loss = ((net(x, t) - (1 - t)[:, None] * x @ a.T) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, t = torch.randn(2000, 2, generator=generator), torch.rand(2000, generator=generator)
    target = (1 - t)[:, None] * x @ a.T
    relative = ((net(x, t) - target) ** 2).mean() / (target**2).mean()
    assert relative < 0.02
