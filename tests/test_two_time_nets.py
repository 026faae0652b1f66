"""Two-time networks: ``mlp`` and ``unet`` with ``second_time = true`` declare the input ``r`` (beside
``y`` where class-conditional), depend on it, refuse a call without it, and leave the one-time
network as it was."""

from __future__ import annotations

import itertools

import pytest
import torch
from flowkit_nets.mlp import MLP
from flowkit_nets.unet import UNet

from flowkit.errors import FlowkitError
from flowkit.interfaces import call_network, network_inputs


@pytest.mark.parametrize(("classes", "inputs"), [(0, ("r",)), (3, ("r", "y"))])
def test_mlp_declares_the_second_time_and_labels(classes, inputs):
    params = MLP.Params(hidden=[8], second_time=True, class_conditional=True)
    assert network_inputs(MLP(params, data_shape=(2,), num_classes=classes)) == inputs
    assert network_inputs(MLP(MLP.Params(hidden=[8]), data_shape=(2,), num_classes=classes)) == ()


@pytest.mark.parametrize("time_features", [0, 3])
def test_mlp_takes_the_step_r_minus_t_as_features_of_its_own(time_features):
    torch.manual_seed(0)
    net = MLP(MLP.Params(hidden=[16], second_time=True, time_features=time_features), data_shape=(2,))
    widths = [2 + 2 * (1 + 2 * time_features), 16, 2]
    assert sum(p.numel() for p in net.parameters()) == sum(a * b + b for a, b in itertools.pairwise(widths))
    x, t = torch.randn(4, 2), torch.rand(4)
    assert not torch.allclose(call_network(net, x, t, r=t), call_network(net, x, t, r=t + 0.5))
    # the step r - t is what it sees: the first layer's input holds r - t after t's features
    first = net.net[0]
    seen = []
    first.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    net(x, t, r=t + 0.25)
    assert torch.allclose(seen[0][:, 3 + 2 * time_features], torch.full((4,), 0.25))
    with pytest.raises(FlowkitError, match="needs the second time r"):
        net(x, t)


def test_the_one_time_mlp_starts_as_before():
    torch.manual_seed(0)
    one = MLP(MLP.Params(hidden=[16]), data_shape=(2,))
    assert not hasattr(one.params, "second_time") or one.params.second_time is False
    x, t = torch.randn(4, 2), torch.rand(4)
    torch.manual_seed(0)
    again = MLP(MLP.Params(hidden=[16], second_time=False), data_shape=(2,))
    assert torch.equal(one(x, t), again(x, t))


def test_unet_declares_r_depends_on_it_and_keeps_the_other_layers():
    params = dict(channels=8, channel_mults=[1], attention=[], groups=4)
    torch.manual_seed(0)
    one = UNet(UNet.Params(**params), data_shape=(1, 4, 4), num_classes=10)
    torch.manual_seed(0)
    two = UNet(UNet.Params(**params, second_time=True), data_shape=(1, 4, 4), num_classes=10)
    assert network_inputs(one) == ("y",) and network_inputs(two) == ("r", "y")
    shared = {k: v for k, v in two.state_dict().items() if not k.startswith("step_mlp.")}
    assert shared.keys() == one.state_dict().keys()
    assert all(torch.equal(v, one.state_dict()[k]) for k, v in shared.items())
    with torch.no_grad():  # the last convolutions start at zero: move every weight off its start
        for p in two.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, t, y = torch.randn(3, 1, 4, 4), torch.rand(3), torch.tensor([0, 1, 2])
    assert not torch.allclose(two(x, t, y=y, r=t), two(x, t, y=y, r=t + 0.5))
    with pytest.raises(FlowkitError, match="needs the second time r"):
        two(x, t, y=y)
