"""The Gaussian conditional path ``p_t(x|z) = N(alpha_t z, beta_t^2 I)`` and score <-> velocity roles.

With ``x = alpha_t z + beta_t eps`` (``docs/math.md``):

* conditional velocity ``u_t(x|z) = alpha'_t z + beta'_t eps``
  ``= alpha'_t z + beta'_t / beta_t (x - alpha_t z)``;
* conditional score ``grad log p_t(x|z) = -(x - alpha_t z) / beta_t^2 = -eps / beta_t``;
* marginal velocity and score convert into each other (linear in ``x`` and the score):
  ``u = alpha'/alpha (x + beta^2 s) - beta' beta s`` and
  ``s = (alpha u - alpha' x) / (beta (alpha' beta - alpha beta'))`` (the numerator split as
  ``alpha (u - k x) - (alpha' - k alpha) x`` for a schedule with ``d_alpha_split``, e.g. OT).

The ``eps`` forms (``sample_with_noise``, ``target_velocity_from_noise``, ``target_score_from_noise``)
never divide by a vanishing ``beta_t``; losses use them. The ``x`` forms of the interface divide by
``beta_t`` and so check that ``t`` lies in ``t_range``.
"""

from __future__ import annotations

import math
from typing import Any, cast

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitError
from flowkit.interfaces import GaussianProbabilityPath, Schedule, ScoreModel, VectorField, per_sample
from flowkit.params import component, param
from flowkit_gaussian.errors import InvalidParameter
from flowkit_gaussian.schedules import CosineSchedule, OTSchedule, VESchedule, VPSchedule

#: The schedules of this package by registered name, so ``GaussianPath()`` works without a registry.
BUILTIN_SCHEDULES: dict[str, type[Schedule]] = {
    "ot": OTSchedule,
    "vp": VPSchedule,
    "ve": VESchedule,
    "cosine": CosineSchedule,
}

# Slack for float32 rounding when checking that t lies in t_range (float32 spacing near 1 is 6e-8).
_T_RANGE_SLACK = 1e-6


def _build_schedule(spec: Any) -> Schedule:
    """A schedule from a built instance, a registered name of this package, or ``{"kind": ..., ...}``."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        spec = {"kind": spec}
    if isinstance(spec, dict) and spec.get("kind") in BUILTIN_SCHEDULES:
        cls = BUILTIN_SCHEDULES[spec["kind"]]
        options = {k: v for k, v in spec.items() if k != "kind"}
        return cls(cls.Params(**options)) if options else cls()
    raise InvalidParameter(
        f"schedule: expected a Schedule or one of {sorted(BUILTIN_SCHEDULES)}, got {spec!r}"
    )


def _combine(a: Tensor | float, z: Tensor, b: Tensor | float, noise: Tensor) -> Tensor:
    """``a z + b noise`` for per-sample tensors or float constants, in as few operations as possible."""
    if isinstance(b, float):
        if isinstance(a, float):
            return torch.add(z, noise, alpha=b) if a == 1.0 else torch.add(z * a, noise, alpha=b)
        return torch.addcmul(noise * b, a, z)
    return torch.addcmul(b * noise, a, z) if not isinstance(a, float) else torch.addcmul(z * a, b, noise)


class GaussianPath(GaussianProbabilityPath):
    """``p_t(x|z) = N(alpha_t z, beta_t^2 I)`` for a :class:`Schedule`; ``p_init = N(0, prior_std^2 I)``.

    Shapes: ``z``, ``x``, ``noise`` are ``(B, *D)``; ``t`` is ``(B,)``. ``t_range`` and ``prior_std``
    come from the schedule.

    Role conversion (:meth:`velocity_from_score`) is singular where ``alpha_t = 0`` (``t = 0`` for OT
    and cosine): there ``x + beta^2 s = alpha E[z|x]`` is 0/0, and a learned score carries no
    information about ``E[z|x]``. For such schedules the adapter evaluates the score and the formula at
    ``max(t, conversion_t_min)``, i.e. it returns the exact velocity at ``conversion_t_min`` for earlier
    times. (The mixture oracle needs no clamp: it has ``E[z|x]`` in closed form.) The opposite
    direction, :meth:`score_from_velocity`, is regular wherever ``beta_t > 0`` and needs no clamp.
    """

    @attrs.define(frozen=True)
    class Params:
        schedule: Schedule = component("ot", doc="Schedule of alpha_t and beta_t (ot, vp, ve, cosine).")
        conversion_t_min: float = param(
            1e-3,
            doc="Score-to-velocity conversion evaluates at t >= this where alpha_t = 0 (OT, cosine).",
            validator=[attrs.validators.gt(0.0), attrs.validators.lt(0.5)],
        )

    def __init__(self, params: GaussianPath.Params | None = None) -> None:
        super().__init__(params)
        self.schedule: Schedule = _build_schedule(self.params.schedule)
        self.conversion_t_min = float(self.params.conversion_t_min)
        start = torch.tensor([self.t_range[0]], dtype=torch.float64)
        # Clamp only schedules whose alpha vanishes at the start (OT, cosine), not VP/VE (alpha_0 > 0).
        self.conversion_clamps = abs(float(self.schedule.coefficients(start).alpha)) < 1e-6

    # -- the schedule ------------------------------------------------------------------------------

    @property
    def t_range(self) -> tuple[float, float]:
        """Closed interval of times where every formula is finite (the schedule's)."""
        lo, hi = self.schedule.t_range
        return (float(lo), float(hi))

    @property
    def prior_std(self) -> float:
        """Standard deviation of ``p_init = N(0, prior_std^2 I)`` (``sigma_max`` for VE)."""
        return float(self.schedule.prior_std)

    def _tensor_coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(alpha, beta, alpha', beta')`` at ``t (B,)`` as tensors shaped ``(B, 1, ..., 1)`` to
        broadcast over ``like (B, *D)``. Constants are made tensors (:meth:`Coefficients.tensors`): the
        formulas below divide by them, and ``float / tensor`` is not ``tensor / tensor`` bitwise."""
        self._check_shapes(like, t)
        t = t.to(dtype=like.dtype)
        c = self.schedule.coefficients(t).tensors(t).broadcast(like)
        return (
            cast(Tensor, c.alpha),
            cast(Tensor, c.beta),
            cast(Tensor, c.d_alpha),
            cast(Tensor, c.d_beta),
        )

    def noise_is_prior(self) -> bool:
        """Whether ``x_0 = alpha_0 z + beta_0 noise`` is the noise itself: ``|alpha_0| < 1e-2`` and
        ``|beta_0 - 1| < 1e-2`` at the start of ``t_range`` (OT with small ``sigma_min``, cosine, VP;
        not VE, whose ``x_0 = z + sigma_max noise``). Only then may a coupling pair noise and data."""
        start = torch.tensor([self.t_range[0]], dtype=torch.float64)
        c = self.schedule.coefficients(start)
        alpha, beta = float(c.alpha), float(c.beta)
        return abs(alpha) < 1e-2 and abs(beta - 1.0) < 1e-2

    # -- sampling ------------------------------------------------------------------------------------

    def sample_prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """``x_0 ~ N(0, prior_std^2 I)``, shape ``shape = (B, *D)``, float32."""
        return self.prior_std * torch.randn(tuple(shape), generator=generator, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; 0, prior_std^2 I)`` for ``x (B, *D)``, shape ``(B,)``, in ``x``'s dtype."""
        dim = x[0].numel()
        var = self.prior_std**2
        return -0.5 * (
            x.reshape(x.shape[0], -1).square().sum(dim=1) / var + dim * math.log(2 * math.pi * var)
        )

    def sample(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``x = alpha_t z + beta_t noise`` (``noise ~ N(0, I)`` drawn when not given); ``(B, *D)``."""
        return self.sample_with_noise(z, t, noise, generator)[0]

    def sample_with_noise(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x, noise)`` with ``x = alpha_t z + beta_t noise``; both ``(B, *D)``."""
        if noise is None:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        elif noise.shape != z.shape:
            raise FlowkitError(f"noise has shape {tuple(noise.shape)}, expected that of z {tuple(z.shape)}")
        alpha, beta, _, _ = self._tensor_coefficients(t, z)
        return alpha * z + beta * noise, noise

    def sample_with_target(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x, u_t(x|z))`` with ``x = alpha_t z + beta_t noise`` and ``u = alpha'_t z + beta'_t noise``.

        One evaluation of the schedule (constants stay floats): the CFM loss's hot path.
        """
        if noise is None:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        self._check_shapes(z, t)
        c = self.schedule.coefficients(t.to(z.dtype)).broadcast(z)
        return _combine(c.alpha, z, c.beta, noise), _combine(c.d_alpha, z, c.d_beta, noise)

    # -- targets ---------------------------------------------------------------------------------

    def target_velocity_from_noise(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``u_t(x|z) = alpha'_t z + beta'_t noise`` for ``x = alpha_t z + beta_t noise``; ``(B, *D)``.

        Regular at every ``t`` where the schedule's derivatives are (no division by ``beta_t``).
        """
        _, _, d_alpha, d_beta = self._tensor_coefficients(t, z)
        return d_alpha * z + d_beta * noise

    def target_score_from_noise(self, noise: Tensor, t: Tensor) -> Tensor:
        """``grad log p_t(x|z) = -noise / beta_t``; ``(B, *D)``."""
        _, beta, _, _ = self._tensor_coefficients(t, noise)
        return -noise / beta

    def target_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``u_t(x|z) = alpha'_t z + beta'_t / beta_t (x - alpha_t z)``, ``(B, *D)``; ``t`` in ``t_range``."""
        self._check_t_range(t, "target_velocity")
        alpha, beta, d_alpha, d_beta = self._tensor_coefficients(t, x)
        return d_alpha * z + d_beta / beta * (x - alpha * z)

    def target_score(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``grad_x log p_t(x|z) = -(x - alpha_t z) / beta_t^2``, ``(B, *D)``; ``t`` in ``t_range``."""
        self._check_t_range(t, "target_score")
        alpha, beta, _, _ = self._tensor_coefficients(t, x)
        return -(x - alpha * z) / (beta * beta)

    # -- score <-> velocity ------------------------------------------------------------------------

    def score_to_velocity(self, x: Tensor, score: Tensor, t: Tensor) -> Tensor:
        """Marginal velocity from the marginal score: ``alpha'/alpha (x + beta^2 s) - beta' beta s``.

        Singular where ``alpha_t = 0``; :meth:`velocity_from_score` clamps ``t`` there. ``(B, *D)``.
        """
        alpha, beta, d_alpha, d_beta = self._tensor_coefficients(t, x)
        return d_alpha / alpha * (x + beta * beta * score) - d_beta * beta * score

    def velocity_to_score(self, x: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """Marginal score from the marginal velocity, ``(B, *D)``.

        ``s = (alpha u - alpha' x) / (beta (alpha' beta - alpha beta'))``: regular wherever ``beta_t > 0``,
        also at ``alpha_t = 0``, where it gives the prior's score ``-x / beta^2``. The second factor of
        the denominator has no cancellation (``alpha' >= 0 >= beta'``; it is 1 for OT). The numerator is
        ``beta (alpha' beta - alpha beta') s``, small against ``alpha u`` and ``alpha' x`` where ``u`` is
        close to ``(alpha' / alpha) x``: OT near ``t = 1``, where ``u = x / t + O(beta)`` and the plain
        ``t u - x`` loses up to ``3e-2`` relative in float32 at ``t = 1 - 1e-4``. A schedule with
        ``d_alpha_split(t) -> (k, alpha' - k alpha)`` (see :mod:`flowkit_gaussian.schedules`) has it
        computed as ``alpha (u - k x) - (alpha' - k alpha) x`` (OT: ``t (u - x) - (1 - t) x``), accurate
        to a few float32 roundings; other schedules use ``alpha u - alpha' x``.
        """
        alpha, beta, d_alpha, d_beta = self._tensor_coefficients(t, x)
        split = getattr(self.schedule, "d_alpha_split", None)
        if split is None:
            numerator = alpha * velocity - d_alpha * x
        else:
            k, remainder = split(t.to(dtype=x.dtype))
            numerator = alpha * torch.sub(velocity, x, alpha=k) - per_sample(remainder, x) * x
        return numerator / (beta * (d_alpha * beta - alpha * d_beta))

    def conversion_time(self, t: Tensor) -> Tensor:
        """The time at which :meth:`velocity_from_score` evaluates: ``t``, or ``max(t, conversion_t_min)``
        for a schedule with ``alpha = 0`` at the start. ``(B,)``."""
        return t.clamp_min(self.conversion_t_min) if self.conversion_clamps else t

    def velocity_from_score(self, score: nn.Module) -> VectorField:
        """The vector field with the marginals of ``score`` (see the class docstring for ``alpha = 0``)."""
        return ScoreAsVelocity(score, self)

    def score_from_velocity(self, velocity: nn.Module) -> ScoreModel:
        """The score of the marginal path that ``velocity`` generates."""
        return VelocityAsScore(velocity, self)

    # -- checks ------------------------------------------------------------------------------------

    @staticmethod
    def _check_shapes(x: Tensor, t: Tensor) -> None:
        if t.dim() != 1 or t.shape[0] not in (1, x.shape[0]):
            raise FlowkitError(
                f"t must have shape (B,) = ({x.shape[0]},) for x of shape {tuple(x.shape)}, "
                f"got {tuple(t.shape)}"
            )

    def _check_t_range(self, t: Tensor, what: str) -> None:
        lo, hi = self.t_range
        t_min, t_max = float(t.min()), float(t.max())
        if t_min < lo - _T_RANGE_SLACK or t_max > hi + _T_RANGE_SLACK:
            raise FlowkitError(
                f"{what}: t must lie in the path's t_range [{lo}, {hi}] (where beta_t > 0), "
                f"got t in [{t_min}, {t_max}]; draw times from path.t_range"
            )


class ScoreAsVelocity(VectorField):
    """A score model seen as a vector field through a Gaussian path: ``forward(x (B, *D), t (B,),
    **inputs)``, the inputs (e.g. labels ``y``) passed on to the score by keyword.

    Evaluates at ``path.conversion_time(t)`` (see :class:`GaussianPath`).
    """

    def __init__(self, score: nn.Module, path: GaussianPath) -> None:
        super().__init__()
        self.score = score
        self.path = path

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        t = self.path.conversion_time(t)
        return self.path.score_to_velocity(x, self.score(x, t, **inputs), t)


class VelocityAsScore(ScoreModel):
    """A vector field seen as the score of its marginal path: ``forward(x (B, *D), t (B,), **inputs)``,
    the inputs (e.g. labels ``y``) passed on to the field by keyword."""

    def __init__(self, velocity: nn.Module, path: GaussianPath) -> None:
        super().__init__()
        self.velocity = velocity
        self.path = path

    @property
    def velocity_source(self) -> nn.Module:
        return self.velocity

    def from_velocity(self, x: Tensor, t: Tensor, velocity: Tensor) -> Tensor:
        """The score given the velocity's value at ``(x, t)``: no second network evaluation."""
        return self.path.velocity_to_score(x, velocity, t)

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        return self.path.velocity_to_score(x, self.velocity(x, t, **inputs), t)
