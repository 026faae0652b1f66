"""Networks declare extra inputs (``Network.inputs``) and receive them by keyword: a second time ``r``
(MeanFlow's), labels ``y``, or both, through a small third-party-style plugin registered with
``registry.add``; and the one error naming the network and the input when one is missing or not
declared."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flowkit import hookimpl
from flowkit.engine.build import build_pipeline
from flowkit.engine.train import TrainLoop
from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    BuildContext,
    Loss,
    Network,
    ProbabilityPath,
    VectorField,
    call_network,
    network_inputs,
)


class TwoTimeNet(Network):
    """``u(x, t, r)``: a linear map of ``[x, t, r]``; records what it was given, by keyword."""

    inputs = ("r",)

    def __init__(self, params: object = None, *, data_shape: tuple[int, ...] = (2,)) -> None:
        super().__init__(params)
        self.shape = data_shape
        self.linear = nn.Linear(math.prod(data_shape) + 2, math.prod(data_shape))
        self.received: list[tuple[str, ...]] = []

    @classmethod
    def from_params(cls, params: object, context: BuildContext) -> TwoTimeNet:
        return cls(params, data_shape=context.data_shape)

    def features(self, x: Tensor, t: Tensor, r: Tensor) -> Tensor:
        return torch.cat([x.reshape(x.shape[0], -1), t[:, None], r[:, None]], dim=1)

    def forward(self, x: Tensor, t: Tensor, r: Tensor | None = None) -> Tensor:
        assert r is not None, "r must come by keyword"
        self.received.append(("r",))
        return self.linear(self.features(x, t, r)).reshape(x.shape)


class ClassTwoTimeNet(TwoTimeNet):
    """``u(x, t, r, y)``: a class-conditional two-time network (``r`` and ``y`` must not collide)."""

    inputs = ("r", "y")

    def __init__(
        self, params: object = None, *, data_shape: tuple[int, ...] = (2,), classes: int = 0
    ) -> None:
        super().__init__(params, data_shape=data_shape)
        self.num_classes = classes
        self.embedding = nn.Embedding(classes + 1, math.prod(data_shape))

    @classmethod
    def from_params(cls, params: object, context: BuildContext) -> ClassTwoTimeNet:
        assert context.dataset is not None
        return cls(params, data_shape=context.data_shape, classes=context.dataset.num_classes)

    def forward(  # type: ignore[override]
        self, x: Tensor, t: Tensor, r: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        assert r is not None and y is not None, "r and y must come by keyword"
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        self.received.append(("r", "y"))
        out = self.linear(self.features(x, t, r)) + self.embedding(y)
        return out.reshape(x.shape)


class AverageVelocity(VectorField):
    """The role: the network's average velocity over ``[t, r]`` at ``r = t`` (the instantaneous one)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        return call_network(self.network, x, t, r=t, **inputs)


class TwoTimeLoss(Loss):
    """Flow matching on the OT path with a second time ``r >= t`` given to the network by keyword."""

    trains = "velocity"

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        return AverageVelocity(network)

    def __call__(self, model, path, z, generator=None, y=None):
        t = torch.rand(z.shape[0], generator=generator, device=z.device)
        r = t + (1.0 - t) * torch.rand(z.shape[0], generator=generator, device=z.device)
        noise = torch.randn(z.shape, generator=generator, device=z.device)
        x, target = path.sample_with_target(z, t, noise, generator)
        return nn.functional.mse_loss(call_network(model.network, x, t, r=r, y=y), target)


class InputsPlugin:
    @staticmethod
    @hookimpl
    def flowkit_register(registry):
        registry.add("model", "two-time", TwoTimeNet)
        registry.add("model", "class-two-time", ClassTwoTimeNet)
        registry.add("loss", "two-time", TwoTimeLoss)


@pytest.fixture
def manager(flowkit_manager):
    manager = flowkit_manager(plugins=[("inputs-test", InputsPlugin)])
    assert manager.problems == []
    return manager


def spec(data: str, model: str, loss: str = "two-time", **train: object) -> dict:
    return {
        "run": {"seed": 0},
        "data": {"kind": data},
        "path": {"kind": "gaussian"},
        "model": {"kind": model},
        "loss": {"kind": loss},
        "train": {"steps": 3, "batch_size": 16, "log_every": 1, **train},
        "sample": {"simulator": "euler", "steps": 2, "n": 8},
        "evaluate": {"n": 8},
    }


def train(pipe, steps: int = 3) -> list[float]:
    with TrainLoop(pipe) as loop:
        return [float(loss) for _, loss, _ in loop.run(steps)]


def test_a_two_time_network_gets_r_by_keyword_from_a_loss(manager):
    pipe = build_pipeline(spec("moons", "two-time"), (), manager)
    assert network_inputs(pipe.model) == ("r",)
    pipe.model.received.clear()  # the build's check of the sampling dynamics called it (r = t)
    losses = train(pipe)
    assert all(math.isfinite(v) for v in losses)
    assert pipe.model.received == [("r",)] * 3
    # the role gives r = t: sampling needs no second time
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    role = pipe.context.roles["velocity"]
    assert torch.equal(role(x, t), pipe.model(x, t, r=t))


def test_a_class_conditional_two_time_network_gets_r_and_y_by_keyword(manager):
    pytest.importorskip("sklearn")
    pipe = build_pipeline(spec("digits", "class-two-time", label_dropout=0.1), (), manager)
    assert network_inputs(pipe.model) == ("r", "y")
    pipe.model.received.clear()  # the build's check of the sampling dynamics called it (r = t)
    assert all(math.isfinite(v) for v in train(pipe))
    assert pipe.model.received == [("r", "y")] * 3


def test_cfm_trains_a_conditional_mlp_given_y_by_keyword(manager):
    pytest.importorskip("sklearn")
    tables = spec("digits", "mlp", loss="cfm", label_dropout=0.1)
    tables["model"] = {"kind": "mlp", "hidden": [16], "class_conditional": True}
    pipe = build_pipeline(tables, (), manager)
    mlp = pipe.model
    assert mlp.inputs == ("y",) and mlp.num_classes == 10
    seen: list[object] = []
    original = mlp.forward

    def spy(x, t, y=None):
        seen.append(y)
        return original(x, t, y=y)

    mlp.forward = spy  # an instance attribute: nn.Module.__call__ reaches it
    assert all(math.isfinite(v) for v in train(pipe, 2))
    assert len(seen) == 2 and all(isinstance(y, Tensor) and y.shape == (16,) for y in seen)
    # the label changes the prediction: the one-hot reaches the first layer
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    zeros, ones = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    assert not torch.equal(original(x, t, y=zeros), original(x, t, y=ones))


def test_an_unconditional_mlp_declares_no_inputs_and_is_called_plainly(manager):
    pipe = build_pipeline(spec("moons", "mlp", loss="cfm"), (), manager)
    assert pipe.model.inputs == () and network_inputs(pipe.model) == ()


def test_a_missing_input_is_one_error_naming_the_network_and_the_input():
    net = TwoTimeNet()
    net.registered_name = "two-time"
    x, t = torch.randn(2, 2), torch.rand(2)
    missing = r"^network 'two-time' declares input 'r' \(inputs: r\), but its caller gives none"
    with pytest.raises(CapabilityError, match=missing):
        call_network(net, x, t)
    undeclared = r"^network 'two-time' does not take input 'y' \(it declares r\)"
    with pytest.raises(CapabilityError, match=undeclared):
        call_network(net, x, t, r=t, y=torch.zeros(2, dtype=torch.long))


def test_inputs_are_seen_through_the_wrappers_torch_puts_around_a_network():
    net = ClassTwoTimeNet(classes=3)

    class Wrapper(nn.Module):  # as DistributedDataParallel keeps it: the submodule "module"
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    wrapped = Wrapper(net)
    assert network_inputs(wrapped) == ("r", "y")
    x, t, y = torch.randn(2, 2), torch.rand(2), torch.tensor([0, 2])
    assert torch.equal(call_network(wrapped, x, t, r=t, y=y), net(x, t, r=t, y=y))
    assert network_inputs(nn.Linear(2, 2)) == ()


def test_a_network_declares_no_inputs_by_default():
    assert Network.inputs == ()
