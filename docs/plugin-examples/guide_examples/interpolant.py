"""A probability path: the linear interpolant from a wider (or narrower) Gaussian prior."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from flowkit.interfaces import ProbabilityPath, per_sample
from flowkit.params import param


class ScaledLinearPath(ProbabilityPath):
    """``x_t = t z + (1 - t) s eps``, ``eps ~ N(0, I)``: from ``p_init = N(0, s^2 I)`` at ``t = 0`` to the
    data point ``z`` at ``t = 1``.

    Target velocity ``u_t(x|z) = z - s eps = (z - x) / (1 - t)``: computed from the noise where it is
    drawn (regular at ``t = 1``); from ``x``, on ``t_range = [0, 1 - 1e-4]``.
    """

    @attrs.define(frozen=True)
    class Params:
        scale: float = param(
            1.0, doc="Standard deviation s of the prior N(0, s^2 I).", validator=attrs.validators.gt(0)
        )

    @property
    def t_range(self) -> tuple[float, float]:
        return (0.0, 1.0 - 1e-4)

    def sample_prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        return self.params.scale * torch.randn(shape, generator=generator, device=device)

    def sample(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return self.sample_with_target(z, t, noise, generator)[0]

    def sample_with_target(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x, u_t(x|z))``, both ``(B, *D)``, from one draw of the noise."""
        if noise is None:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        t_b, scaled = per_sample(t, z), self.params.scale * noise
        return t_b * z + (1 - t_b) * scaled, z - scaled

    def target_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        return (z - x) / (1 - per_sample(t, x))

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; 0, s^2 I)``, shape ``(B,)``."""
        dims, s = x[0].numel(), self.params.scale
        return -x.flatten(1).pow(2).sum(1) / (2 * s**2) - dims * math.log(s * math.sqrt(2 * math.pi))
