"""Fixed-step integrators: Euler, Heun, midpoint and RK4 for ODEs, Euler–Maruyama for SDEs.

Every ``step`` takes ``x (B, *D)``, ``t (B,)`` and ``h (B,)`` and returns a new ``(B, *D)`` tensor; the
caller's ``x`` is never modified. Steps write into the one tensor they allocate for the result
(``addcmul``/``addcmul_``), so a step costs the drift evaluations plus one or two buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.interfaces import ODE, SDE, per_sample
from flowkit.solvers import FixedStepSimulator


class EulerSimulator(FixedStepSimulator):
    """Explicit Euler, first order: ``x <- x + h u_t(x)``. One drift evaluation per step."""

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        return torch.addcmul(x, per_sample(h, x), dynamics.drift(x, t))


class HeunSimulator(FixedStepSimulator):
    """Heun's method (explicit trapezoid), second order. Two drift evaluations per step.

    ``k1 = u_t(x)``, ``k2 = u_{t+h}(x + h k1)``, ``x <- x + h/2 (k1 + k2)``. Every step, the last
    included, does its correction, so ``last_nfe`` is exactly ``2 * steps``.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = per_sample(h, x)
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(torch.addcmul(x, h_b, k1), t + h)
        half_h = 0.5 * h_b
        # ``out`` is the only buffer this step owns; k1/k2 may alias tensors of the field, so they
        # are read, never written.
        out = torch.addcmul(x, half_h, k1)
        return out.addcmul_(half_h, k2)


class MidpointSimulator(FixedStepSimulator):
    """Explicit midpoint method, second order. Two drift evaluations per step.

    ``k1 = u_t(x)``, ``x <- x + h u_{t+h/2}(x + h/2 k1)``.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = per_sample(h, x)
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(torch.addcmul(x, 0.5 * h_b, k1), t + 0.5 * h)
        return torch.addcmul(x, h_b, k2)


class RK4Simulator(FixedStepSimulator):
    """Classical Runge–Kutta, fourth order. Four drift evaluations per step.

    ``k1 = u_t(x)``, ``k2 = u_{t+h/2}(x + h/2 k1)``, ``k3 = u_{t+h/2}(x + h/2 k2)``,
    ``k4 = u_{t+h}(x + h k3)``, ``x <- x + h/6 (k1 + 2 k2 + 2 k3 + k4)``.
    """

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        h_b = per_sample(h, x)
        half, sixth = 0.5 * h_b, h_b / 6.0
        t_mid = t + 0.5 * h
        k1 = dynamics.drift(x, t)
        k2 = dynamics.drift(torch.addcmul(x, half, k1), t_mid)
        k3 = dynamics.drift(torch.addcmul(x, half, k2), t_mid)
        k4 = dynamics.drift(torch.addcmul(x, h_b, k3), t + h)
        # ``out`` is the only buffer written: the k's may alias tensors of the field.
        out = torch.addcmul(x, sixth, k1)
        out.addcmul_(2.0 * sixth, k2).addcmul_(2.0 * sixth, k3)
        return out.addcmul_(sixth, k4)


class EulerMaruyamaSimulator(FixedStepSimulator):
    """Euler–Maruyama, strong order 1/2: ``x <- x + h drift(x, t) + sigma_t sqrt(h) eps``.

    ``eps ~ N(0, I)`` is drawn with the given generator (on ``x``'s device and dtype), so a run is
    reproducible from its seed. It also accepts an ODE: an ODE is an SDE with ``sigma_t = 0``, and the
    step is then exactly Euler's and draws no noise (the generator is not advanced). The Brownian
    increment has variance ``|h|``; the grid is increasing, so ``h > 0``.
    """

    solves = SDE  # and an ODE, as the noise-free case

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""
        out = torch.addcmul(x, per_sample(h, x), dynamics.drift(x, t))
        if not isinstance(dynamics, SDE):
            return out
        noise_scale = dynamics.diffusion(t) * h.abs().sqrt()
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return out.addcmul_(per_sample(noise_scale, x), noise)
