"""Two more fixed-step ODE simulators: Ralston's method (order 2) and Kutta's 3/8 rule (order 4).

flowkit ships ``euler``, ``heun``, ``midpoint`` and ``rk4`` itself; these are the other classical
members of the same families, with different weights. A fixed-step simulator derives from
:class:`flowkit.solvers.FixedStepSimulator` and implements one method,
``step(dynamics, x, t, h, generator)``: advance ``x (B, *D)`` from times ``t (B,)`` by steps ``h (B,)``.
The base class runs it over the time grid, counts drift evaluations (``last_nfe``) and reports
progress; ``solves = ODE`` (the default) makes flowkit refuse an SDE, whose noise a deterministic step
would silently drop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.interfaces import ODE, per_sample
from flowkit.solvers import FixedStepSimulator


class RalstonSimulator(FixedStepSimulator):
    """Ralston's method, second order, with the smallest error bound of the two-stage methods.

    ``k1 = f(x, t)``, ``k2 = f(x + 2h/3 k1, t + 2h/3)``, ``x <- x + h (k1 / 4 + 3 k2 / 4)``.
    Two drift evaluations per step.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = per_sample(h, x)
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(x + (2.0 / 3.0) * h_b * k1, t + (2.0 / 3.0) * h)
        return x + h_b * (0.25 * k1 + 0.75 * k2)


class RK38Simulator(FixedStepSimulator):
    """Kutta's 3/8 rule, fourth order. Four drift evaluations per step.

    ``k1 = f(x, t)``, ``k2 = f(x + h/3 k1, t + h/3)``, ``k3 = f(x + h (k2 - k1/3), t + 2h/3)``,
    ``k4 = f(x + h (k1 - k2 + k3), t + h)``, ``x <- x + h/8 (k1 + 3 k2 + 3 k3 + k4)``.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = per_sample(h, x)
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(x + h_b * k1 / 3.0, t + h / 3.0)
        k3 = dynamics.drift(x + h_b * (k2 - k1 / 3.0), t + (2.0 / 3.0) * h)
        k4 = dynamics.drift(x + h_b * (k1 - k2 + k3), t + h)
        return x + (h_b / 8.0) * (k1 + 3.0 * k2 + 3.0 * k3 + k4)
