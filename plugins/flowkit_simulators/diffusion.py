"""Samplers built on a Gaussian path's schedule: ``dpm-solver++`` and ``edm`` (``docs/math.md``,
"Faster samplers").

Both integrate the probability-flow ODE ``dX = u_t(X) dt`` of a Gaussian path ``x_t = alpha_t z + beta_t eps``
through the model's data prediction ``x_hat(x, t) = E[z | x_t = x]``, which
:class:`~flowkit.interfaces.ProbabilityFlowODE` reads off the velocity. They refuse (in :meth:`check`, when
the pipeline is built) an SDE, and an ODE that is not the flow of a Gaussian path.

* :class:`DPMSolverPlusPlus`: the exponential integrator in ``lambda_t = log(alpha_t / beta_t)``, exact in
  the linear part, with ``x_hat`` extrapolated linearly over the last two steps (2M; ``order = 1`` is
  DDIM). One evaluation per step.
* :class:`EDMSampler`: Heun in ``sigma = beta_t / alpha_t`` on ``x / alpha_t`` (Karras et al. 2022,
  Algorithm 2), with optional churn noise; two evaluations per step. Use it (and DPM-Solver++) with
  ``grid = "karras"``.
"""

from __future__ import annotations

import math
from typing import ClassVar, cast

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import ODE, SDE, GaussianProbabilityPath, ProbabilityFlowODE, Progress, Simulator
from flowkit.params import param
from flowkit.solvers import GridSimulator
from flowkit_simulators.timegrids import noise_levels, times_of_sigmas


def _check_flow(simulator: Simulator, dynamics: ODE) -> None:
    """Refuse dynamics other than the probability-flow ODE of a Gaussian path, naming what to change."""
    name = simulator.display_name
    dyn = dynamics.display_name
    if isinstance(dynamics, SDE):
        raise CapabilityError(
            f"simulator '{name}' integrates the probability-flow ODE of a Gaussian path, but dynamics "
            f'\'{dyn}\' is an SDE; use dynamics = "flow", or an SDE simulator (e.g. "euler-maruyama")'
        )
    if not isinstance(dynamics, ProbabilityFlowODE):
        raise CapabilityError(
            f"simulator '{name}' needs the probability-flow ODE of a Gaussian path (its data prediction), "
            f"but dynamics '{dyn}' is a {type(dynamics).__name__}; use dynamics = \"flow\""
        )
    if not isinstance(dynamics.path, GaussianProbabilityPath):
        raise CapabilityError(
            f"simulator '{name}' needs a Gaussian path (its alpha_t and beta_t), but dynamics '{dyn}' has "
            f'none; use [path] kind = "gaussian", or a simulator for any ODE (e.g. "heun", "dopri5")'
        )


def _coefficient_dtype(x: Tensor) -> torch.dtype:
    # The schedule at the grid is computed once per call, in float64 where the device has it.
    return torch.float32 if x.device.type == "mps" else torch.float64


class DPMSolverPlusPlus(GridSimulator):
    """DPM-Solver++ (Lu et al. 2022) in data-prediction form, multistep: 2M (``order = 2``) or DDIM (1).

    From ``s = t_i`` to ``t = t_{i+1}`` with ``h_i = lambda_t - lambda_s``, ``lambda = log(alpha / beta)``:
    ``x_t = (beta_t / beta_s) x_s + alpha_t (1 - e^{-h_i}) D_i``, where ``D_i = x_hat(x_s, s)`` (1st order)
    or ``D_i = x_hat_i + (x_hat_i - x_hat_{i-1}) / (2 r_i)``, ``r_i = h_{i-1} / h_i`` (2M). The first step is
    1st order, and so is the last unless ``lower_order_final = false``: the paths end near ``sigma = 0``
    (``lambda -> inf``), where the last step is the longest in ``lambda`` and extrapolating ``x_hat`` over it
    overshoots (k-diffusion and diffusers do the same). ``e^{-h} = alpha_s beta_t / (beta_s alpha_t)``, so a
    start at ``alpha = 0`` (OT, cosine: ``lambda = -inf``) is exact: the first step gives
    ``beta_t x_0 + alpha_t x_hat`` and the next is 1st order (``1 / r = 0``). One data prediction (one
    network evaluation) per step: ``last_nfe = steps``.
    Global error ``O(h^order)``. No host synchronisation: capturable.
    """

    solves: ClassVar[type] = ODE
    capturable: ClassVar[bool] = True

    @attrs.define(frozen=True)
    class Params:
        order: int = param(
            2,
            doc="2: the multistep 2M update; 1: first order (DDIM).",
            validator=attrs.validators.in_([1, 2]),
        )
        lower_order_final: bool = param(
            True, doc="Take the last step (into the path's clean end) with the 1st-order update."
        )

    def check(self, dynamics: ODE) -> None:
        """Refuse anything but the probability-flow ODE of a Gaussian path (``dynamics = "flow"``)."""
        _check_flow(self, dynamics)
        super().check(dynamics)

    def _coefficients(self, path: GaussianProbabilityPath, ts: Tensor, like: Tensor) -> tuple[Tensor, ...]:
        """Per-step ``beta_t / beta_s``, ``alpha_t (1 - e^{-h})`` and ``1 / (2 r)``, each ``(T,)``."""
        t = ts.to(dtype=_coefficient_dtype(like))
        c = path.schedule.coefficients(t).tensors(t)
        alpha, beta = cast(Tensor, c.alpha), cast(Tensor, c.beta)
        lam = alpha.log() - beta.log()  # -inf where alpha = 0
        h = lam[1:] - lam[:-1]
        scale_x = beta[1:] / beta[:-1]
        scale_d = alpha[1:] * -torch.expm1(-h)  # alpha_t (1 - e^{-h}); exp(-inf) = 0
        half_inv_r = torch.zeros_like(h)
        if h.numel() > 1:
            # 1 / (2 r_i) = h_i / (2 h_{i-1}): 0 after an infinite step; first order into an infinite one.
            ratio = h[1:] / (2 * h[:-1])
            half_inv_r[1:] = torch.where(torch.isfinite(ratio), ratio, torch.zeros_like(ratio))
        if self.params.lower_order_final:
            half_inv_r[-1] = 0.0
        return tuple(c.to(dtype=like.dtype) for c in (scale_x, scale_d, half_inv_r))

    def _run(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None,
        keep: bool,
        progress: Progress | None,
    ) -> tuple[Tensor, list[Tensor]]:
        self.check(dynamics)
        assert (
            isinstance(dynamics, ProbabilityFlowODE) and dynamics.path is not None
        )  # check() refused the rest
        ts = ts.to(device=x.device)
        scale_x, scale_d, half_inv_r = self._coefficients(dynamics.path, ts, x)
        times = ts.to(dtype=x.dtype)
        batch = x.shape[0]
        previous: list[Tensor] = []  # the last step's data prediction (2M extrapolates from it)

        def advance(flow: ODE, i: int, x: Tensor) -> Tensor:
            assert isinstance(flow, ProbabilityFlowODE)  # counted() keeps the type
            x_hat = flow.data_prediction(x, times[i].expand(batch))
            d = x_hat
            if self.params.order == 2 and previous:
                d = torch.addcmul(x_hat, half_inv_r[i], x_hat - previous[0])
            previous[:] = [x_hat]
            return torch.addcmul(x * scale_x[i], scale_d[i], d)

        return self.walk(dynamics, x, ts.numel() - 1, advance, keep, progress)


def _non_negative_or_inf(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if math.isnan(value) or value < 0:
        raise ValueError(f"{attribute.name} must be >= 0 (inf allowed), got {value!r}")


class EDMSampler(GridSimulator):
    """EDM's sampler (Karras et al. 2022, Algorithm 2): Heun in ``sigma = beta_t / alpha_t``, with churn.

    On ``y = x / alpha_t`` the flow is ``dy / dsigma = (y - x_hat) / sigma``. A step from ``sigma_i`` to
    ``sigma_{i+1}``: with ``gamma = min(s_churn / N, sqrt(2) - 1)`` where ``s_tmin <= sigma_i <= s_tmax``
    (else 0), raise the noise to ``sigma_hat = (1 + gamma) sigma_i`` by adding
    ``sqrt(sigma_hat^2 - sigma_i^2) s_noise eps``; take the Euler step
    ``y' = y + (sigma_{i+1} - sigma_hat) d``, ``d = (y - x_hat(y, sigma_hat)) / sigma_hat``; correct it with
    the trapezoid of ``d`` and ``d' = (y' - x_hat(y', sigma_{i+1})) / sigma_{i+1}`` (Heun). Times and noise
    levels map onto each other through the schedule (:func:`~flowkit_simulators.timegrids.times_of_sigmas`).

    A step from ``sigma = inf`` (the start of OT or cosine, ``alpha = 0``) or to ``sigma = 0`` is the Euler
    step alone, written in ``x`` as ``(beta_t / beta_s) x + alpha_t (1 - sigma_t / sigma_s) x_hat`` (finite
    there), and it takes no churn. As EDM's step to ``sigma = 0``, the last step is Euler alone too
    (``final_euler``; the built-in paths end at ``sigma ~ 1e-5``, their ``sigma = 0``). So ``last_nfe = 2 N``
    minus one for each such step: ``2 N - 2`` from OT's ``t = 0``, ``2 N - 1`` for VE. ``s_churn = 0`` is the
    deterministic sampler (Algorithm 1), second order. Churn noise comes from ``generator``. The grid decides
    per step which update applies and is read on the host: not capturable as a CUDA graph.
    """

    solves: ClassVar[type] = ODE
    capturable: ClassVar[bool] = False

    @attrs.define(frozen=True)
    class Params:
        s_churn: float = param(
            0.0, doc="Total churn S_churn (0: deterministic Heun).", validator=_non_negative_or_inf
        )
        s_noise: float = param(
            1.0,
            doc="S_noise: scale of the churn noise (EDM: 1.007 on images).",
            validator=_non_negative_or_inf,
        )
        s_tmin: float = param(0.0, doc="Churn only where sigma >= S_tmin.", validator=_non_negative_or_inf)
        s_tmax: float = param(
            float("inf"),
            doc="Churn only where sigma <= S_tmax (inf: everywhere).",
            validator=_non_negative_or_inf,
        )
        final_euler: bool = param(
            True, doc="The last step is Euler alone, as EDM's step to sigma = 0 (the paths' clean end)."
        )

    def check(self, dynamics: ODE) -> None:
        """Refuse anything but the probability-flow ODE of a Gaussian path (``dynamics = "flow"``)."""
        _check_flow(self, dynamics)
        super().check(dynamics)

    def _run(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None,
        keep: bool,
        progress: Progress | None,
    ) -> tuple[Tensor, list[Tensor]]:
        self.check(dynamics)
        assert (
            isinstance(dynamics, ProbabilityFlowODE) and dynamics.path is not None
        )  # check() refused the rest
        schedule, p = dynamics.path.schedule, self.params
        grid = ts.detach().to(device="cpu", dtype=torch.float64)
        if grid.numel() > 1 and not bool((grid[1:] > grid[:-1]).all()):
            raise FlowkitError(f"simulator '{self.registered_name or 'edm'}' needs increasing times ts")
        total = grid.numel() - 1
        sigmas = noise_levels(schedule, grid).tolist()
        gammas = [
            min(p.s_churn / max(total, 1), math.sqrt(2.0) - 1.0)
            if p.s_churn > 0 and math.isfinite(s) and s > 0 and p.s_tmin <= s <= p.s_tmax
            else 0.0
            for s in sigmas
        ]
        hats = [s * (1.0 + g) for s, g in zip(sigmas, gammas, strict=True)]
        lo, hi = float(grid[0]), float(grid[-1])
        # Churn moves the state to an earlier time t_hat (a higher noise level); read off the schedule.
        t_hats = times_of_sigmas(schedule, torch.tensor(hats, dtype=torch.float64), lo, hi).tolist()
        t_hats = [
            t_hat if g > 0 else float(t) for t_hat, g, t in zip(t_hats, gammas, grid.tolist(), strict=True)
        ]
        batch = x.shape[0]

        def coefficients(t: float) -> tuple[float, float]:
            at = torch.tensor([t], dtype=torch.float64)
            c = schedule.coefficients(at)
            return float(c.alpha), float(c.beta)

        def advance(flow: ODE, i: int, x: Tensor) -> Tensor:
            assert isinstance(flow, ProbabilityFlowODE)  # counted() keeps the type
            t_hat, t_next = t_hats[i], float(grid[i + 1])
            alpha_hat, beta_hat = coefficients(t_hat)
            alpha_next, beta_next = coefficients(t_next)
            if gammas[i] > 0:
                alpha_i = coefficients(float(grid[i]))[0]
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                spread = math.sqrt(hats[i] ** 2 - sigmas[i] ** 2) * p.s_noise
                x = (alpha_hat / alpha_i) * x + (alpha_hat * spread) * noise  # y_hat = y + spread eps
            x_hat = flow.data_prediction(x, x.new_full((batch,), t_hat))
            sigma_hat, sigma_next = hats[i], sigmas[i + 1]
            last = i == total - 1 and p.final_euler
            if last or not (math.isfinite(sigma_hat) and sigma_next > 0):
                # Euler alone; 1 - sigma_next / sigma_hat without dividing by alpha_hat = 0.
                keep_x = beta_next / beta_hat
                x = keep_x * x + alpha_next * (1.0 - alpha_hat * beta_next / (beta_hat * alpha_next)) * x_hat
            else:
                y = x / alpha_hat
                y_euler = (sigma_next / sigma_hat) * y + (1.0 - sigma_next / sigma_hat) * x_hat
                x_hat_next = flow.data_prediction(y_euler * alpha_next, x.new_full((batch,), t_next))
                # y + (sigma' - sigma_hat) (d + d') / 2, with (sigma' - sigma_hat) d = y_euler - y
                y_next = 0.5 * (y + y_euler) + (0.5 * (1.0 - sigma_hat / sigma_next)) * (y_euler - x_hat_next)
                x = alpha_next * y_next
            return x

        return self.walk(dynamics, x, total, advance, keep, progress)
