"""A guider: classifier-free guidance whose weight grows along the path."""

from __future__ import annotations

import attrs
from torch import Tensor

from flowkit.interfaces import Guider, ScaleParams, per_sample
from flowkit.params import param


class RampGuidance(Guider):
    """``c + w t^p (c - u)``: classifier-free guidance at the weight ``w t^p``, none at the noise
    (``t = 0``, where guidance costs diversity most) and the full ``w`` at the data (``t = 1``).
    ``p = 0`` is ``cfg``."""

    @attrs.define(frozen=True)
    class Params(ScaleParams):  # classes and scale, as every guider has, and one knob of its own
        power: float = param(1.0, doc="Exponent p of the ramp t^p.", validator=attrs.validators.ge(0))

    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The guided field ``(B, *D)`` from the two evaluations at ``x (B, *D)``, ``t (B,)``."""
        weight = self.params.scale * t.pow(self.params.power)
        return cond + per_sample(weight, cond) * (cond - uncond)
