"""Time grids for fixed-step simulators: ``uniform``, ``power``, ``karras`` (EDM's noise levels) and
``shift`` (the flow-matching schedule of SD3 and Flux).

A grid is an increasing float64 tensor of ``steps + 1`` times whose first and last entries are exactly
``t_start`` and ``t_end`` (the simulator casts it to the dtype of the state).
"""

from __future__ import annotations

import math
from typing import cast

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError, ConfigError
from flowkit.interfaces import BuildContext, GaussianProbabilityPath, Schedule, TimeGrid
from flowkit.params import param


def _validate(grid: str, steps: int, t_start: float, t_end: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"time grid '{grid}' needs an integer number of steps >= 1, got {steps!r}")
    if not (math.isfinite(t_start) and math.isfinite(t_end)) or not t_start < t_end:
        raise ConfigError(
            f"time grid '{grid}' needs finite times with t_start < t_end, got t_start = {t_start!r}, "
            f"t_end = {t_end!r}"
        )


def _pin_ends(grid: Tensor, t_start: float, t_end: float) -> Tensor:
    # Rounding in the affine map could move the endpoints by an ulp; the path's t_range is exact.
    grid[0] = t_start
    grid[-1] = t_end
    return grid


class UniformGrid(TimeGrid):
    """Equal steps: ``t_i = t_start + (t_end - t_start) i / N``, shape ``(N + 1,)``, float64."""

    def __call__(self, steps: int, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
        """Increasing grid of ``steps + 1`` times from ``t_start`` to ``t_end``."""
        _validate("uniform", steps, t_start, t_end)
        return _pin_ends(torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64), t_start, t_end)


class PowerGrid(TimeGrid):
    """Steps that shrink towards the data end: ``t_i = t_start + (t_end - t_start) (1 - (1 - i/N)^rho)``.

    ``rho = 1`` is uniform; ``rho > 1`` concentrates steps near ``t_end`` (``t = 1``, where a learned
    field is stiffest): the last step is ``(1/N)^rho`` of the interval and the first about ``rho / N``.
    ``rho < 1`` concentrates them near ``t_start`` instead.
    """

    @attrs.define(frozen=True)
    class Params:
        rho: float = param(
            2.0,
            doc="Exponent; > 1 puts small steps near t = 1, 1 is uniform.",
            validator=attrs.validators.gt(0),
        )

    def __call__(self, steps: int, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
        """Increasing grid of ``steps + 1`` times from ``t_start`` to ``t_end``."""
        _validate("power", steps, t_start, t_end)
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        fraction = 1.0 - (1.0 - u).pow(self.params.rho)
        return _pin_ends(t_start + (t_end - t_start) * fraction, t_start, t_end)


# -- grids in sigma = beta / alpha (Gaussian paths) ---------------------------------------------------


def noise_levels(schedule: Schedule, t: Tensor) -> Tensor:
    """``sigma_t = beta_t / alpha_t`` at ``t (T,)`` in float64, ``(T,)``; ``inf`` where ``alpha_t = 0``."""
    t = t.to(torch.float64)
    c = schedule.coefficients(t).tensors(t)
    return cast(Tensor, c.beta) / cast(Tensor, c.alpha)


def times_of_sigmas(schedule: Schedule, sigmas: Tensor, t_start: float, t_end: float) -> Tensor:
    """The times in ``[t_start, t_end]`` where ``beta_t / alpha_t`` equals ``sigmas (K,)``, float64 ``(K,)``.

    ``lambda_t = log(alpha_t / beta_t) = -log sigma_t`` increases with ``t`` for every schedule of a
    Gaussian path, so bisection (64 halvings: float64 resolution) inverts it for any schedule; a sigma
    outside the path's range maps to the nearer end.
    """
    sigmas = sigmas.to(torch.float64)
    lo = torch.full_like(sigmas, t_start)
    hi = torch.full_like(sigmas, t_end)
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = noise_levels(schedule, mid) > sigmas  # still too noisy: the time lies later
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def _finite_positive(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be finite and > 0, got {value!r}")


class KarrasGrid(TimeGrid):
    """The EDM noise levels (Karras et al. 2022, eq. 5) mapped onto ``t`` through a Gaussian path's schedule.

    ``sigma_i = (sigma_hi^(1/rho) + i / (M - 1) (sigma_lo^(1/rho) - sigma_hi^(1/rho)))^rho`` in
    ``sigma = beta_t / alpha_t``, each at the time where the schedule reaches it (:func:`times_of_sigmas`).
    ``sigma_hi = min(sigma_max, sigma(t_start))``. Where the path ends cleaner than ``sigma_min`` (OT, VP,
    cosine: ``sigma(t_end) ~ 1e-5``), the ``M = steps`` levels run down to ``sigma_min`` and the last step
    goes on to ``t_end``, like EDM's final step to ``sigma = 0``; otherwise (VE) the ``M = steps + 1``
    levels end at ``sigma(t_end)``. The first time is always ``t_start``, where the prior is drawn: from OT's
    ``sigma(0) = inf`` the first step goes straight to the second level. ``(steps + 1,)``, float64.
    """

    @attrs.define(frozen=True)
    class Params:
        rho: float = param(7.0, doc="Exponent of the grid in sigma (EDM: 7).", validator=_finite_positive)
        sigma_min: float = param(
            0.002,
            doc="Smallest noise level sigma = beta/alpha before the path's end.",
            validator=_finite_positive,
        )
        sigma_max: float = param(
            80.0,
            doc="Largest noise level (capped at the path's sigma at t_start).",
            validator=_finite_positive,
        )

    def __init__(self, params: KarrasGrid.Params | None = None, *, schedule: Schedule | None = None) -> None:
        super().__init__(params)
        if self.params.sigma_min >= self.params.sigma_max:
            raise ConfigError(
                f"time grid 'karras' needs sigma_min < sigma_max, got sigma_min = {self.params.sigma_min!r}, "
                f"sigma_max = {self.params.sigma_max!r}"
            )
        self.schedule = schedule

    @classmethod
    def from_params(cls, params: KarrasGrid.Params, context: BuildContext) -> KarrasGrid:
        """Take the schedule of ``context.path``; a path that is not Gaussian is refused."""
        path = context.path
        if not isinstance(path, GaussianProbabilityPath):
            name = getattr(path, "registered_name", None) or type(path).__name__
            raise CapabilityError(
                f"[sample] grid 'karras' spaces noise levels sigma = beta_t / alpha_t of a Gaussian path, "
                f'but [path] is \'{name}\'; use [path] kind = "gaussian" or grid = "uniform" or "power"'
            )
        return cls(params, schedule=path.schedule)

    def __call__(self, steps: int, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
        """Increasing grid of ``steps + 1`` times from ``t_start`` to ``t_end``."""
        _validate("karras", steps, t_start, t_end)
        if self.schedule is None:
            raise CapabilityError(
                "time grid 'karras' was built without a schedule; build it through a pipeline with a "
                "Gaussian path, or pass it directly: KarrasGrid(schedule=my_schedule)"
            )
        p = self.params
        ends = noise_levels(self.schedule, torch.tensor([t_start, t_end], dtype=torch.float64))
        sigma_hi = min(p.sigma_max, float(ends[0]))
        to_end = float(ends[1]) < p.sigma_min  # the path ends cleaner than sigma_min
        sigma_lo = p.sigma_min if to_end else float(ends[1])
        levels = steps if to_end else steps + 1
        if steps == 1:
            return torch.tensor([t_start, t_end], dtype=torch.float64)
        if not sigma_lo < sigma_hi:
            raise ConfigError(
                f"time grid 'karras' needs noise levels from sigma_max down to sigma_min within the path's, "
                f"but they run from {sigma_hi:.4g} to {sigma_lo:.4g}; lower sigma_min or raise sigma_max"
            )
        u = torch.linspace(0.0, 1.0, levels, dtype=torch.float64)
        hi, lo = sigma_hi ** (1 / p.rho), sigma_lo ** (1 / p.rho)
        sigmas = (hi + u * (lo - hi)).pow(p.rho)
        grid = times_of_sigmas(self.schedule, sigmas, t_start, t_end)
        if to_end:
            grid = torch.cat([grid, grid.new_tensor([t_end])])
        grid = _pin_ends(grid, t_start, t_end)
        if not bool((grid[1:] > grid[:-1]).all()):
            raise ConfigError(
                f"time grid 'karras': {steps} steps from sigma = {sigma_hi:.4g} to {sigma_lo:.4g} give "
                f"repeated times on [{t_start}, {t_end}]; use fewer steps or a wider sigma range"
            )
        return grid


# -- diffusers' flow-matching schedule ----------------------------------------------------------------


def _finite_or_none(_instance: object, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, got {value!r}")


class ShiftGrid(TimeGrid):
    """diffusers' ``FlowMatchEulerDiscreteScheduler`` sigmas (SD3, Flux) in flowkit's time ``t = 1 - sigma``
    (noise at ``t = 0``), mapped affinely onto ``[t_start, t_end]``.

    With ``N = train_steps`` and ``S(s) = shift s / (1 + (shift - 1) s)`` (the static shift), the
    sigmas are ``linspace(1, sigma_min, steps)`` shifted, then 0; ``sigma_min = S(1 / N)`` (diffusers
    shifts its training sigmas once when it is built and the inference ones again). With ``mu`` (its
    ``use_dynamic_shifting``, mu chosen by resolution) they are ``linspace(1, 1 / N, steps)`` through
    ``exp(mu) / (exp(mu) + (1 / s - 1))`` and ``shift`` is unused. ``shift > 1`` or ``mu > 0`` spends
    more steps at high noise, as high resolutions need. ``(steps + 1,)``, float64.
    """

    @attrs.define(frozen=True)
    class Params:
        shift: float = param(
            1.0,
            doc="Static shift (SD3: 3.0; 1: no shift). Unused when mu is set.",
            validator=_finite_positive,
        )
        mu: float | None = param(
            None,
            doc="Resolution-dependent shift (diffusers' use_dynamic_shifting, e.g. Flux's "
            "mu = 0.5 + 0.65 (seq_len - 256) / 3840); unset: the static shift.",
            validator=_finite_or_none,
        )
        train_steps: int = param(
            1000,
            doc="diffusers' num_train_timesteps: the last sigma before 0 is 1 / train_steps (shifted).",
            validator=attrs.validators.ge(2),
        )

    def sigmas(self, steps: int) -> Tensor:
        """diffusers' sigmas, ``(steps + 1,)`` float64, from 1 down to 0."""
        p = self.params
        n = p.train_steps

        def static(s: Tensor | float) -> Tensor | float:
            return p.shift * s / (1 + (p.shift - 1) * s)

        if p.mu is None:
            levels = cast(
                Tensor, static(torch.linspace(1.0, float(static(1.0 / n)), steps, dtype=torch.float64))
            )
        else:
            levels = torch.linspace(1.0, 1.0 / n, steps, dtype=torch.float64)
            levels = math.exp(p.mu) / (math.exp(p.mu) + (1 / levels - 1))
        return torch.cat([levels, levels.new_zeros(1)])

    def __call__(self, steps: int, t_start: float = 0.0, t_end: float = 1.0) -> Tensor:
        """Increasing grid of ``steps + 1`` times from ``t_start`` to ``t_end``."""
        _validate("shift", steps, t_start, t_end)
        return _pin_ends(t_start + (t_end - t_start) * (1 - self.sigmas(steps)), t_start, t_end)
