"""Distributions of training times (the kind ``time``): ``uniform``, ``logit-normal``, ``mode`` and
``cosmap``.

Each draws ``u`` in ``[0, 1]``; a loss maps it onto its path's ``t_range``. Flowkit's time has the
noise at ``t = 0``; diffusers' ``compute_density_for_timestep_sampling`` draws the noise level
``sigma = 1 - t`` instead, so ``mode`` and ``cosmap`` here are its densities mirrored (docs/math.md,
"Training-time densities"). Each also gives its ``density`` and ``cdf`` in closed form.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from flowkit.interfaces import TimeDistribution
from flowkit.params import param


class WarpedUniform(TimeDistribution):
    """Times ``warp(v)`` of uniform draws ``v ~ U[0, 1)``, one ``torch.rand`` draw per time."""

    def warp(self, v: Tensor) -> Tensor:
        """Uniform draws ``v (n,)`` to times ``(n,)``: the identity here."""
        return v

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` times ``warp(v)``, ``(n,)``."""
        return self.warp(torch.rand((n,), generator=generator, device=device, dtype=dtype))


class UniformTime(WarpedUniform):
    """``u ~ U[0, 1)``: one ``torch.rand`` draw per time."""

    def density(self, t: Tensor) -> Tensor:
        """``p(t) = 1`` on ``[0, 1]``."""
        return torch.ones_like(t)

    def cdf(self, t: Tensor) -> Tensor:
        """``P(u <= t) = t`` on ``[0, 1]``."""
        return t.clamp(0.0, 1.0)


class LogitNormalTime(TimeDistribution):
    """``u = sigmoid(mean + std * N(0, 1))``: favours the middle of the path (Esser et al. 2024)."""

    @attrs.define(frozen=True)
    class Params:
        mean: float = param(0.0, doc="Mean of the normal whose sigmoid is the time.")
        std: float = param(
            1.0,
            doc="Standard deviation of the normal whose sigmoid is the time.",
            validator=attrs.validators.gt(0.0),
        )

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` logit-normal times, ``(n,)``."""
        normal = torch.randn((n,), generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(self.params.mean + self.params.std * normal)

    def density(self, t: Tensor) -> Tensor:
        """``p(t) = phi((logit t - mean) / std) / (std t (1 - t))`` on ``(0, 1)``."""
        z = (torch.logit(t) - self.params.mean) / self.params.std
        return torch.exp(-0.5 * z * z) / (math.sqrt(2 * math.pi) * self.params.std * t * (1 - t))

    def cdf(self, t: Tensor) -> Tensor:
        """``P(u <= t) = Phi((logit t - mean) / std)``."""
        z = (torch.logit(t) - self.params.mean) / self.params.std
        return 0.5 * torch.erfc(-z / math.sqrt(2.0))


#: mode's warp ``g`` is increasing (a density) for ``-1 < s < 1 / (pi / 2 - 1)``.
_MODE_MAX = 1.0 / (math.pi / 2 - 1)


def _mode_scale(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not -1.0 < value < _MODE_MAX:
        raise ValueError(
            f"mode_scale must lie in (-1, {_MODE_MAX:.4f}) for the warp to be increasing; got {value}"
        )


class ModeTime(WarpedUniform):
    """SD3's mode sampling (Esser et al. 2024, eq. 20; diffusers' ``weighting_scheme = "mode"``) in
    flowkit's time: ``t = g(v) = v + s (cos^2(pi v / 2) - 1 + v)`` with ``v ~ U[0, 1)``. ``s > 0`` moves
    the mass towards the middle of the path (the mode of the density), ``s = 0`` is uniform. diffusers
    draws the noise level ``1 - v - s (cos^2(pi v / 2) - 1 + v)``, which is ``1 - g(v)``: the same times.
    The density is ``1 / g'(g^{-1}(t))`` with ``g'(v) = 1 + s - (s pi / 2) sin(pi v)``."""

    @attrs.define(frozen=True)
    class Params:
        mode_scale: float = param(
            1.29,
            doc="s: how far the mass moves to the middle (diffusers' default 1.29; 0: uniform).",
            validator=_mode_scale,
        )

    def warp(self, v: Tensor) -> Tensor:
        """``g(v) = v + s (cos^2(pi v / 2) - 1 + v)``: uniform draws to times."""
        s = self.params.mode_scale
        return v + s * (torch.cos(math.pi * v / 2) ** 2 - 1 + v)

    def cdf(self, t: Tensor) -> Tensor:
        """``P(g(v) <= t) = g^{-1}(t)``, by bisection (``g`` increases; 60 halvings)."""
        lo, hi = torch.zeros_like(t), torch.ones_like(t)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = self.warp(mid) < t
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def density(self, t: Tensor) -> Tensor:
        """``1 / g'(g^{-1}(t))``."""
        s = self.params.mode_scale
        return 1.0 / (1 + s - (s * math.pi / 2) * torch.sin(math.pi * self.cdf(t)))


class CosmapTime(WarpedUniform):
    """The cosine-map density (Esser et al. 2024, eq. 21; diffusers' ``weighting_scheme = "cosmap"``) in
    flowkit's time: ``t = 1 / (1 + tan(pi v / 2))`` with ``v ~ U[0, 1)``, the mirror of diffusers' noise
    level ``1 - 1 / (1 + tan(pi v / 2))``. Density ``2 / (pi (t^2 + (1 - t)^2))``, symmetric about 1/2;
    CDF ``1 - (2 / pi) atan(1 / t - 1)``."""

    def warp(self, v: Tensor) -> Tensor:
        """``1 / (1 + tan(pi v / 2))``: uniform draws to times."""
        return 1 / (1 + torch.tan(math.pi * v / 2))

    def density(self, t: Tensor) -> Tensor:
        """``2 / (pi (t^2 + (1 - t)^2))``."""
        return 2 / (math.pi * (t * t + (1 - t) * (1 - t)))

    def cdf(self, t: Tensor) -> Tensor:
        """``1 - (2 / pi) atan((1 - t) / t)``."""
        return 1 - (2 / math.pi) * torch.atan2(1 - t, t)
