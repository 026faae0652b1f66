"""Higher-order fixed-step ODE simulators: explicit midpoint (order 2) and classical Runge–Kutta (order 4).

A fixed-step simulator derives from :class:`flowkit.solvers.FixedStepSimulator` and implements one
method, ``step(dynamics, x, t, h, generator)``: advance ``x (B, *D)`` from times ``t (B,)`` by steps
``h (B,)``. The base class runs it over the time grid, counts drift evaluations (``last_nfe``) and
reports progress; ``solves = ODE`` (the default) makes flowkit refuse an SDE, whose noise a
deterministic step would silently drop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.interfaces import ODE, per_sample
from flowkit.solvers import FixedStepSimulator


class MidpointSimulator(FixedStepSimulator):
    """Explicit midpoint method, second order. Two drift evaluations per step.

    ``k1 = f(x, t)``, ``x <- x + h f(x + h/2 k1, t + h/2)``.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = per_sample(h, x)
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(x + 0.5 * h_b * k1, t + 0.5 * h)
        return x + h_b * k2


class RK4Simulator(FixedStepSimulator):
    """Classical Runge–Kutta, fourth order. Four drift evaluations per step.

    ``k1 = f(x, t)``, ``k2 = f(x + h/2 k1, t + h/2)``, ``k3 = f(x + h/2 k2, t + h/2)``,
    ``k4 = f(x + h k3, t + h)``, ``x <- x + h/6 (k1 + 2 k2 + 2 k3 + k4)``.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = per_sample(h, x)
        half = 0.5 * h_b
        t_mid = t + 0.5 * h
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(x + half * k1, t_mid)
        k3 = dynamics.drift(x + half * k2, t_mid)
        k4 = dynamics.drift(x + h_b * k3, t + h)
        return x + (h_b / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
