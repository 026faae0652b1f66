"""Higher-order fixed-step ODE simulators: explicit midpoint (order 2) and classical Runge–Kutta (order 4).

A simulator implements one method, ``step(dynamics, x, t, h, generator)``: advance ``x (B, *D)`` from
times ``t (B,)`` by steps ``h (B,)``. flowkit's :class:`~flowkit.interfaces.Simulator` runs it over
the time grid, counts drift evaluations (``last_nfe``) and reports progress.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import ODE, SDE, Simulator


def _per_sample(values: Tensor, x: Tensor) -> Tensor:
    """View ``values (B,)`` as ``(B, 1, ..., 1)`` so it broadcasts over ``x (B, *D)``."""
    return values.reshape((-1,) + (1,) * (x.dim() - 1))


class _ODEOnly(Simulator):
    """Deterministic integrators: an SDE is refused, since its noise would be silently dropped."""

    solves = ODE

    def check(self, dynamics: ODE) -> None:
        """Raise :class:`CapabilityError` unless ``dynamics`` is an ODE (and not an SDE)."""
        # SDE derives from ODE, so the base class's isinstance check alone would accept an SDE.
        if isinstance(dynamics, SDE):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates an ODE, but dynamics "
                f"'{dynamics.registered_name}' is an SDE; choose a simulator for an SDE "
                f'(e.g. "euler-maruyama") or ODE dynamics ("flow")'
            )
        super().check(dynamics)


class MidpointSimulator(_ODEOnly):
    """Explicit midpoint method, second order. Two drift evaluations per step.

    ``k1 = f(x, t)``, ``x <- x + h f(x + h/2 k1, t + h/2)``.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = _per_sample(h, x)
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(x + 0.5 * h_b * k1, t + 0.5 * h)
        return x + h_b * k2


class RK4Simulator(_ODEOnly):
    """Classical Runge–Kutta, fourth order. Four drift evaluations per step.

    ``k1 = f(x, t)``, ``k2 = f(x + h/2 k1, t + h/2)``, ``k3 = f(x + h/2 k2, t + h/2)``,
    ``k4 = f(x + h k3, t + h)``, ``x <- x + h/6 (k1 + 2 k2 + 2 k3 + k4)``.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = _per_sample(h, x)
        half = 0.5 * h_b
        t_mid = t + 0.5 * h
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(x + half * k1, t_mid)
        k3 = dynamics.drift(x + half * k2, t_mid)
        k4 = dynamics.drift(x + h_b * k3, t + h)
        return x + (h_b / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
