"""Schedules ``(alpha_t, beta_t)`` of Gaussian paths ``p_t(x|z) = N(alpha_t z, beta_t^2 I)``.

Time runs from noise (``t = 0``) to data (``t = 1``), as everywhere in flowkit (``docs/math.md``). Every
schedule gives ``alpha_t``, ``beta_t`` and their analytic time derivatives for ``t`` of shape ``(B,)``,
and sets ``t_range``, the closed interval where all of them (and the path's targets, which divide by
``beta_t``) are finite: a schedule with ``beta_1 = 0`` stops at ``1 - SINGULAR_EDGE``.

A schedule of this package may also define ``d_alpha_split(t) -> (k, alpha'_t - k alpha_t)``: an exact
constant ``k`` close to ``alpha'_t / alpha_t`` where the velocity is dominated by ``(alpha' / alpha) x``,
and the remainder computed without cancellation. :class:`~flowkit_gaussian.path.GaussianPath` uses it
to convert a velocity into a score accurately in float32 (OT defines it; VP, VE and cosine need not).
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from flowkit.interfaces import Coefficients, Schedule
from flowkit.params import param
from flowkit_gaussian.errors import InvalidParameter

#: Distance kept from a time where ``beta_t = 0`` (the path's targets divide by ``beta_t``). At this
#: distance ``beta`` is about ``1e-5`` (OT, cosine) or ``1e-3`` (VP): the end state differs from the
#: data by far less than any sampler's discretization error.
SINGULAR_EDGE = 1e-5


class OTSchedule(Schedule):
    """Conditional optimal transport (Lipman et al.): ``alpha_t = t``, ``beta_t = 1 - (1 - sigma_min) t``.

    ``alpha' = 1``, ``beta' = -(1 - sigma_min)``; the conditional velocity is ``z - (1 - sigma_min) eps``.
    ``t_range``: with ``sigma_min > 0`` every formula is regular on ``[0, 1]``; with ``sigma_min = 0``,
    ``beta_1 = 0`` (the conditional score and ``u_t(x|z)`` written in ``x`` are 0/0 there), so the
    range is ``[0, 1 - SINGULAR_EDGE]``.
    """

    @attrs.define(frozen=True)
    class Params:
        sigma_min: float = param(
            0.0,
            doc="Noise std left at t = 1 (0: the path ends exactly at the data).",
            validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)],
        )

    def __init__(self, params: OTSchedule.Params | None = None) -> None:
        super().__init__(params)
        self.sigma_min = float(self.params.sigma_min)
        self.t_range = (0.0, 1.0) if self.sigma_min > 0 else (0.0, 1.0 - SINGULAR_EDGE)
        self.prior_std = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        return t.clone()

    def beta(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def d_beta(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.sigma_min))

    def coefficients(self, t: Tensor) -> Coefficients:
        """``(t, 1 - (1 - sigma_min) t, 1, -(1 - sigma_min))``; the constant derivatives as floats."""
        slope = 1.0 - self.sigma_min
        return Coefficients(t, 1.0 - slope * t, 1.0, -slope)

    def d_alpha_split(self, t: Tensor) -> tuple[float, Tensor]:
        """``(k, alpha'_t - k alpha_t) = (1, 1 - t)``, the remainder exact in floating point for ``t >= 1/2``.

        Near ``t = 1`` the OT velocity is ``u = x / t + O(beta_t)``: ``alpha u - alpha' x = t u - x``
        cancels, and :meth:`GaussianPath.velocity_to_score` computes it as ``t (u - x) - (1 - t) x``
        (``u - x`` is exact where ``u`` is close to ``x``). ``(B,)``.
        """
        return 1.0, 1.0 - t


class VPSchedule(Schedule):
    """Variance preserving (DDPM / score-SDE VP) with a linear ``beta(s)``, ``s = 1 - t``.

    ``alpha_t = exp(-B(s) / 2)``, ``beta_t = sqrt(1 - alpha_t^2)``, where
    ``B(s) = beta_min s + (beta_max - beta_min) s^2 / 2`` is the integral of the score-SDE rate
    ``beta(r) = beta_min + (beta_max - beta_min) r``. ``alpha_0 = exp(-B(1)/2)`` (about 0.0066 with the
    defaults), not 0. ``beta_t`` is computed as ``sqrt(-expm1(-B(s)))``, accurate where it is small.
    ``beta'_t = -alpha_t^2 B'(s) / (2 beta_t)`` diverges at ``t = 1`` (``beta_1 = 0``), so
    ``t_range = [0, 1 - SINGULAR_EDGE]`` (there ``beta`` is about 1e-3 with the defaults).
    """

    @attrs.define(frozen=True)
    class Params:
        beta_min: float = param(
            0.1, doc="Score-SDE rate beta(s) at the data end (s = 0).", validator=attrs.validators.gt(0.0)
        )
        beta_max: float = param(
            20.0, doc="Score-SDE rate beta(s) at the noise end (s = 1).", validator=attrs.validators.gt(0.0)
        )

        def __attrs_post_init__(self) -> None:
            if self.beta_max < self.beta_min:
                raise InvalidParameter(f"beta_max ({self.beta_max}) must be >= beta_min ({self.beta_min})")

    def __init__(self, params: VPSchedule.Params | None = None) -> None:
        super().__init__(params)
        self.beta_min = float(self.params.beta_min)
        self.beta_max = float(self.params.beta_max)
        self.t_range = (0.0, 1.0 - SINGULAR_EDGE)
        self.prior_std = 1.0

    def integrated_rate(self, s: Tensor) -> Tensor:
        """``B(s) = ∫_0^s beta(r) dr`` in score-SDE time ``s = 1 - t``; shape of ``s``."""
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s * s

    def rate(self, s: Tensor) -> Tensor:
        """The score-SDE rate ``beta(s) = B'(s)``; shape of ``s``."""
        return self.beta_min + (self.beta_max - self.beta_min) * s

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integrated_rate(1.0 - t))

    def beta(self, t: Tensor) -> Tensor:
        # 1 - alpha^2 = -expm1(-B): no cancellation where alpha is close to 1.
        return torch.sqrt(-torch.expm1(-self.integrated_rate(1.0 - t)))

    def d_alpha(self, t: Tensor) -> Tensor:
        s = 1.0 - t
        return 0.5 * self.rate(s) * torch.exp(-0.5 * self.integrated_rate(s))

    def d_beta(self, t: Tensor) -> Tensor:
        s = 1.0 - t
        alpha_sq = torch.exp(-self.integrated_rate(s))
        return -0.5 * self.rate(s) * alpha_sq / self.beta(t)


class VESchedule(Schedule):
    """Variance exploding (NCSN / score-SDE VE): ``alpha_t = 1``, ``beta_t = sigma_min r^(1 - t)``.

    ``r = sigma_max / sigma_min``; ``beta' = -log(r) beta``. ``alpha = 1`` always, so ``p_0(.|z)`` is
    ``N(z, sigma_max^2 I)``, which the prior ``N(0, sigma_max^2 I)`` (``prior_std = sigma_max``)
    approximates when ``sigma_max`` is large against the data. ``beta >= sigma_min > 0``, so every
    formula is regular on ``t_range = [0, 1]``.
    """

    @attrs.define(frozen=True)
    class Params:
        sigma_min: float = param(
            0.01, doc="Noise std at t = 1 (the data end).", validator=attrs.validators.gt(0.0)
        )
        sigma_max: float = param(
            50.0, doc="Noise std at t = 0; also the prior's std.", validator=attrs.validators.gt(0.0)
        )

        def __attrs_post_init__(self) -> None:
            if self.sigma_max <= self.sigma_min:
                raise InvalidParameter(f"sigma_max ({self.sigma_max}) must be > sigma_min ({self.sigma_min})")

    def __init__(self, params: VESchedule.Params | None = None) -> None:
        super().__init__(params)
        self.sigma_min = float(self.params.sigma_min)
        self.sigma_max = float(self.params.sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.t_range = (0.0, 1.0)
        self.prior_std = self.sigma_max

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def beta(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp((1.0 - t) * self.log_ratio)

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def d_beta(self, t: Tensor) -> Tensor:
        return -self.log_ratio * self.beta(t)


class CosineSchedule(Schedule):
    """Cosine (variance preserving): ``alpha_t = sin(pi t / 2)``, ``beta_t = cos(pi t / 2)``.

    ``beta_t`` is computed as ``sin(pi (1 - t) / 2)``, exactly 0 at ``t = 1`` and accurate near it
    (``cos`` in float32 gives ``-4e-8`` there). ``beta_1 = 0``, so ``t_range = [0, 1 - SINGULAR_EDGE]``.
    """

    def __init__(self, params: object = None) -> None:
        super().__init__(params)
        self.t_range = (0.0, 1.0 - SINGULAR_EDGE)
        self.prior_std = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def beta(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * (1.0 - t))

    def d_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))

    def d_beta(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)
