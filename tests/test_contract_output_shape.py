"""A loss owns the output shape of what it trains (``Loss.output_shape``): a small third-party-style
categorical loss (cross-entropy over ``K`` classes per coordinate) makes ``mlp`` predict logits
``(B, D, K)`` and ``unet`` ``(B, C, H, W, K)``, while a velocity loss still gives ``(B, *D)``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from flowkit import hookimpl
from flowkit.engine.build import build_pipeline
from flowkit.engine.train import TrainLoop
from flowkit.errors import ConfigError
from flowkit.interfaces import Loss, ProbabilityPath, VectorField, call_network

K = 5


class Logits(VectorField):
    """The network's logits ``(B, *D, K)``; what a categorical sampler would read."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        return call_network(self.network, x, t, **inputs)


class CategoricalLoss(Loss):
    """Cross-entropy of the logits ``(B, *D, K)`` against each coordinate's bin among ``K`` on [-2, 2]."""

    trains = "velocity"

    def output_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*data_shape, K)

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        return Logits(network)

    def __call__(self, model, path, z, generator=None, y=None):
        bins = ((z.clamp(-2.0, 1.999) + 2.0) * (K / 4.0)).long()  # (B, *D) in 0 .. K - 1
        t = torch.rand(z.shape[0], generator=generator, device=z.device)
        x = path.sample(z, t, None, generator)
        logits = model(x, t)
        assert logits.shape == (*z.shape, K)
        return nn.functional.cross_entropy(logits.reshape(-1, K), bins.reshape(-1))


class CategoricalPlugin:
    @staticmethod
    @hookimpl
    def flowkit_register(registry):
        registry.add("loss", "categorical-test", CategoricalLoss)


@pytest.fixture
def manager(flowkit_manager):
    manager = flowkit_manager(plugins=[("categorical-test", CategoricalPlugin)])
    assert manager.problems == []
    return manager


def spec(data: str, model: dict, loss: str) -> dict:
    return {
        "run": {"seed": 0},
        "data": {"kind": data},
        "path": {"kind": "gaussian"},
        "model": model,
        "loss": {"kind": loss},
        "train": {"steps": 4, "batch_size": 16, "log_every": 2},
        "sample": {"simulator": "euler", "steps": 2, "n": 8},
        "evaluate": {"n": 8},
    }


def test_a_categorical_loss_trains_an_mlp_predicting_logits(manager):
    pipe = build_pipeline(spec("moons", {"kind": "mlp", "hidden": [32]}, "categorical-test"), (), manager)
    assert pipe.context.output_shape == (2, K)
    x, t = torch.randn(7, 2), torch.rand(7)
    assert pipe.model(x, t).shape == (7, 2, K)
    assert pipe.model.net[-1].out_features == 2 * K  # the last layer is built from the output shape
    with TrainLoop(pipe) as loop:
        losses = [float(loss) for _, loss, _ in loop.run(4)]
    assert all(math.isfinite(v) for v in losses)
    # at initialisation the logits are near uniform: the cross-entropy is near ln K
    assert losses[0] == pytest.approx(math.log(K), abs=0.5)


def test_a_velocity_loss_still_gives_the_data_shape(manager):
    pipe = build_pipeline(spec("moons", {"kind": "mlp", "hidden": [32]}, "cfm"), (), manager)
    assert pipe.context.output_shape == (2,)
    assert pipe.model(torch.randn(7, 2), torch.rand(7)).shape == (7, 2)


def test_a_unet_gives_logits_per_pixel(manager):
    pytest.importorskip("sklearn")
    model = {"kind": "unet", "channels": 8, "channel_mults": [1], "groups": 4, "class_conditional": False}
    pipe = build_pipeline(spec("digits", model, "categorical-test"), (), manager)
    out = pipe.model(torch.randn(3, 1, 8, 8), torch.rand(3))
    assert out.shape == (3, 1, 8, 8, K)
    assert build_pipeline(spec("digits", model, "cfm"), (), manager).model(
        torch.randn(3, 1, 8, 8), torch.rand(3)
    ).shape == (3, 1, 8, 8)


def test_a_unet_refuses_an_output_shape_it_cannot_give(manager):
    from flowkit_nets.unet import UNet

    refused = r"unet predicts the data's shape \(1, 8, 8\) or \(C, H, W, K\), but the loss asks for \(3,\)"
    with pytest.raises(ConfigError, match=refused):
        UNet(UNet.Params(channels=8, groups=4), data_shape=(1, 8, 8), output_shape=(3,))
