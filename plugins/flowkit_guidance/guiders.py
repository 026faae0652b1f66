"""Classifier-free guidance and the variants that reshape its update ``cond - uncond``: ``cfg``,
``interval``, ``apg``, ``cfg-zero-star`` and ``rescale`` (docs/math.md, "Guidance").

Flowkit's weight ``w`` is diffusers' ``guidance_scale - 1``: ``cfg`` is ``(1 + w) cond - w uncond``.
Each variant, with its own knob neutral, computes exactly what ``cfg`` computes (the same arithmetic,
:func:`flowkit.interfaces.classifier_free`), so its samples equal ``cfg``'s bit for bit.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import Guider, ScaleParams, classifier_free, per_sample
from flowkit.params import param

#: The validators of a time on [0, 1], and of a band's end ``t_hi`` (its Params hold ``t_lo`` too).
UNIT = [attrs.validators.ge(0.0), attrs.validators.le(1.0)]


def not_below_t_lo(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if value < instance.t_lo:
        raise ValueError(f"t_hi = {value} must not be below t_lo = {instance.t_lo}")


def guided_in_band(cond: Tensor, uncond: Tensor, t: Tensor, scale: float, t_lo: float, t_hi: float) -> Tensor:
    """``cond + scale (cond - uncond)`` where ``t_lo <= t <= t_hi``, ``cond`` elsewhere, per sample;
    ``(B, *D)``."""
    guided = classifier_free(cond, uncond, scale)
    if t_lo <= 0.0 and t_hi >= 1.0:  # the band covers every time: guided everywhere
        return guided
    inside = (t >= t_lo) & (t <= t_hi)
    return torch.where(per_sample(inside, cond), guided, cond)


def _event_dims(x: Tensor) -> tuple[int, ...]:
    """The dimensions of one sample of ``x (B, *D)``: reductions per sample run over them."""
    return tuple(range(1, x.ndim))


class ClassifierFree(Guider):
    """Classifier-free guidance (Ho & Salimans 2022): ``(1 + w) cond - w uncond``."""

    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``cond + w (cond - uncond)``, ``(B, *D)``."""
        return classifier_free(cond, uncond, self.params.scale)


class GuidanceInterval(Guider):
    """Classifier-free guidance on the band ``t_lo <= t <= t_hi`` only, the conditional field outside
    (Kynkäänniemi et al. 2024, arXiv 2404.07724). Noise is at ``t = 0``: their band of noise levels
    ``sigma_lo < sigma <= sigma_hi`` is ``t(sigma_hi) <= t < t(sigma_lo)``; on the OT path
    ``sigma = (1 - t) / t``, so ``t(sigma) = 1 / (1 + sigma)``."""

    @attrs.define(frozen=True)
    class Params(ScaleParams):
        t_lo: float = param(0.0, doc="Guidance starts at this time (0: from the noise).", validator=UNIT)
        t_hi: float = param(
            1.0, doc="Guidance ends after this time (1: up to the data).", validator=[*UNIT, not_below_t_lo]
        )

    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``cfg`` where ``t_lo <= t <= t_hi``, ``cond`` elsewhere, per sample; ``(B, *D)``."""
        p = self.params
        return guided_in_band(cond, uncond, t, p.scale, p.t_lo, p.t_hi)


class AdaptiveProjected(Guider):
    """Adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416), as diffusers'
    ``normalized_guidance`` computes it: the update ``d = cond - uncond`` (with momentum, a running
    ``d_k + beta d_{k-1} + ...`` over the evaluations of one simulation; with a threshold ``r``,
    scaled to norm at most ``r`` per sample) is split into its part parallel to ``cond`` and the part
    orthogonal to it (in float64), and ``uncond + (1 + w) (d_orth + eta d_par)`` is the guided field.
    ``eta = 1``, ``r = 0``, ``beta = 0`` is ``cfg``."""

    @attrs.define(frozen=True)
    class Params(ScaleParams):
        eta: float = param(
            1.0,
            doc="Weight of the update's part parallel to the conditional prediction (1: kept, as cfg; "
            "the paper: 0).",
            validator=attrs.validators.ge(0.0),
        )
        norm_threshold: float = param(
            0.0,
            doc="Largest norm of the update per sample (0: unbounded; diffusers' "
            "adaptive_projected_guidance_rescale).",
            validator=attrs.validators.ge(0.0),
        )
        momentum: float = param(
            0.0,
            doc="beta of the running update d + beta d_prev over a simulation's evaluations (the paper: "
            "negative, e.g. -0.5; 0: none).",
            validator=[attrs.validators.gt(-1.0), attrs.validators.lt(1.0)],
        )

    def __init__(self, params: AdaptiveProjected.Params | None = None) -> None:
        super().__init__(params)
        self._running: Tensor | None = None

    @property
    def stateful(self) -> bool:
        """With momentum, the running update carries over from one evaluation to the next."""
        return bool(self.params.momentum != 0.0)

    def reset(self) -> None:
        """A new simulation: no running update."""
        self._running = None

    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``uncond + (1 + w) (d_orth + eta d_par)``, ``(B, *D)``."""
        p = self.params
        if p.eta == 1.0 and p.norm_threshold == 0.0 and p.momentum == 0.0:
            return classifier_free(cond, uncond, p.scale)
        dims = _event_dims(cond)
        diff = cond - uncond
        if p.momentum != 0.0:
            running = diff if self._running is None else diff + p.momentum * self._running
            self._running = diff = running
        if p.norm_threshold > 0.0:
            norm = diff.norm(p=2, dim=dims, keepdim=True)
            diff = diff * torch.minimum(torch.ones_like(diff), p.norm_threshold / norm)
        d, c = diff.double(), cond.double()
        direction = c / c.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)  # F.normalize over dims
        parallel = (d * direction).sum(dim=dims, keepdim=True) * direction
        update = (d - parallel).to(diff.dtype) + p.eta * parallel.to(diff.dtype)
        return uncond + (1.0 + p.scale) * update


class ZeroStar(Guider):
    """CFG-Zero* (Fan et al. 2025, WeichenFan/CFG-Zero-star; diffusers'
    ``ClassifierFreeZeroStarGuidance``): the unconditional field scaled by the per-sample projection
    ``s* = <cond, uncond> / (||uncond||^2 + 1e-8)`` before guiding, ``cond + w (cond - s* uncond)``;
    and zero-init, the guided field zero over the first ``zero_init_steps`` steps of the ``[sample]``
    grid (every evaluation at ``t < t_K``; Euler then leaves the noise where it is for those steps,
    as the paper's sampler does). ``optimized = false`` and ``zero_init_steps = 0`` is ``cfg``."""

    @attrs.define(frozen=True)
    class Params(ScaleParams):
        optimized: bool = param(True, doc="Scale the unconditional field by s* (false: plain cfg).")
        zero_init_steps: int = param(
            0,
            doc="Steps of the [sample] grid at whose start the guided field is zero (0: none; diffusers' "
            "zero_init_steps).",
            validator=attrs.validators.ge(0),
        )

    def __init__(self, params: ZeroStar.Params | None = None) -> None:
        super().__init__(params)
        self._zero_until: float | None = None

    @property
    def needs_unconditional(self) -> bool:
        """Zero-init needs the combination even at ``w = 0``."""
        return bool(self.params.scale != 0.0 or self.params.zero_init_steps > 0)

    def prepare(self, times: Tensor | None) -> None:
        """Read the time of the ``zero_init_steps``-th grid point (refused for an adaptive simulator)."""
        k = self.params.zero_init_steps
        if k == 0:
            return
        if times is None:
            raise CapabilityError(
                "zero_init_steps counts steps of the [sample] grid, which an adaptive simulator does not "
                "follow; set zero_init_steps = 0 or use a fixed-step simulator"
            )
        if k >= len(times) - 1:
            raise CapabilityError(
                f"zero_init_steps = {k} would zero all {len(times) - 1} steps of the [sample] grid; "
                "lower it below [sample] steps"
            )
        self._zero_until = float(times[k])

    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``cond + w (cond - s* uncond)``, zero before the ``K``-th grid time; ``(B, *D)``."""
        p = self.params
        if p.optimized:
            flat_c, flat_u = cond.flatten(1).float(), uncond.flatten(1).float()
            dot = (flat_c * flat_u).sum(dim=1, keepdim=True)
            best = (dot / ((flat_u * flat_u).sum(dim=1, keepdim=True) + 1e-8)).to(cond.dtype)
            uncond = uncond * per_sample(best.view(-1), uncond)
        guided = classifier_free(cond, uncond, p.scale)
        if self._zero_until is None:
            return guided
        return torch.where(per_sample(t < self._zero_until, guided), torch.zeros_like(guided), guided)


class RescaledGuidance(Guider):
    """Guidance rescale (Lin et al. 2023, arXiv 2305.08891, eq. 15-16; diffusers' ``rescale_noise_cfg``):
    the ``cfg`` field ``g`` rescaled to the standard deviation (over each sample's values) of the
    conditional one, mixed by ``phi``: ``phi g std(cond) / std(g) + (1 - phi) g``. ``phi = 0`` is ``cfg``."""

    @attrs.define(frozen=True)
    class Params(ScaleParams):
        phi: float = param(
            0.7, doc="Share of the rescaled field (0: plain cfg; the paper: 0.7).", validator=UNIT
        )

    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``phi g std(cond) / std(g) + (1 - phi) g`` with ``g`` the cfg field; ``(B, *D)``."""
        guided = classifier_free(cond, uncond, self.params.scale)
        phi = self.params.phi
        if phi == 0.0:
            return guided
        dims = _event_dims(cond)
        rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
        return phi * rescaled + (1.0 - phi) * guided
