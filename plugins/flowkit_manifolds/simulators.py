"""Euler, midpoint and RK4 that step on the manifold, as flow_matching's ``RiemannianODESolver`` does.

Each stage evaluates the drift at a point projected onto the manifold (``dynamics.project``) and, where
the dynamics are constrained by a ``geodesic`` path, takes the drift's tangent part; the step ends
with the projection (``GridSimulator.walk`` applies it). The generic ``euler``, ``midpoint`` and
``rk4`` project only the end of each step, so their inner stages may leave the manifold. RK4 is the
3/8 rule (stages at ``t``, ``t + h/3``, ``t + 2h/3``, ``t + h``), flow_matching's choice, so the two
agree step for step (``docs/math.md``, "Projected solvers").
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.interfaces import ODE
from flowkit.solvers import FixedStepSimulator
from flowkit_manifolds.path import GeodesicPath


def tangent_drift(dynamics: ODE, x: Tensor, t: Tensor) -> Tensor:
    """The drift at ``x``, projected onto the tangent space where a ``geodesic`` path constrains the
    dynamics (a tangent network's drift is unchanged by it)."""
    velocity = dynamics.drift(x, t)
    path = dynamics.constraint
    if isinstance(path, GeodesicPath):
        return path.manifold.to_tangent(x, velocity)
    return velocity


def _on(dynamics: ODE, x: Tensor) -> Tensor:
    return dynamics.project(x) if dynamics.projects else x


def _scaled(h: Tensor, x: Tensor) -> Tensor:
    return h.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


class ManifoldEuler(FixedStepSimulator):
    """``x <- proj(x + h v(x, t))``, ``v`` the tangent drift."""

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        return x + _scaled(h, x) * tangent_drift(dynamics, x, t)


class ManifoldMidpoint(FixedStepSimulator):
    """``x_mid = proj(x + h/2 v(x, t))``, ``x <- proj(x + h v(x_mid, t + h/2))``."""

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        hb = _scaled(h, x)
        middle = _on(dynamics, x + 0.5 * hb * tangent_drift(dynamics, x, t))
        return x + hb * tangent_drift(dynamics, middle, t + 0.5 * h)


class ManifoldRK4(FixedStepSimulator):
    """The 3/8-rule RK4 with each stage's point projected onto the manifold."""

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        hb = _scaled(h, x)
        k1 = tangent_drift(dynamics, x, t)
        k2 = tangent_drift(dynamics, _on(dynamics, x + hb * k1 / 3), t + h / 3)
        k3 = tangent_drift(dynamics, _on(dynamics, x + hb * (k2 - k1 / 3)), t + h * (2.0 / 3.0))
        k4 = tangent_drift(dynamics, _on(dynamics, x + hb * (k1 - k2 + k3)), t + h)
        return x + (k1 + 3.0 * (k2 + k3) + k4) * (hb * 0.125)
