"""A loss: velocity regression with a time weighting ``(1 - t)^power``."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from flowkit.interfaces import Loss, ProbabilityPath, TimeDistribution, VectorField
from flowkit.params import component, param


class AsVelocity(VectorField):
    """The role a network plays for this loss: its output is the velocity ``u_t(x)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.network(x, t) if y is None else self.network(x, t, y)


class WeightedVelocityLoss(Loss):
    """``E_{t, z, x ~ p_t(.|z)} (1 - t)^p ||u^theta_t(x) - u_t(x|z)||^2`` (mean over dims).

    ``p = 0`` is plain flow matching. On the linear path ``u^theta - u = (z^theta - z) / (1 - t)``, so
    ``p = 2`` is the squared error of the implied data prediction ``z^theta``: no weight grows near data.
    """

    trains = "velocity"

    @attrs.define(frozen=True)
    class Params:
        power: float = param(
            1.0,
            doc="Exponent p of the weight (1 - t)^p (0: unweighted).",
            validator=[attrs.validators.ge(0), attrs.validators.le(2)],
        )
        time: TimeDistribution = component("uniform", doc="Distribution of the training times.")

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        return AsVelocity(network)

    def __call__(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss on ``z (B, *D)``: draws ``t (B,)`` on ``path.t_range``, then the noise."""
        lo, hi = path.t_range
        u = self.params.time.sample(z.shape[0], generator, z.device, z.dtype)  # (B,) in [0, 1]
        t = lo + (hi - lo) * u
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        x, target = path.sample_with_target(z, t, noise, generator)
        error = (model(x, t) if y is None else model(x, t, y)) - target
        return ((1 - t) ** self.params.power * error.pow(2).flatten(1).mean(1)).mean()
