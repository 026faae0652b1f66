"""The ``polynomial`` schedule: the straight OT path, run at a speed that slows down near the data.

``alpha_t = 1 - (1 - t)^p``, ``beta_t = (1 - t)^p`` with ``p = power >= 1``. For ``p = 1`` it is the
OT schedule ``(t, 1 - t)``; for ``p > 1`` the same straight-line interpolation is traversed quickly at
first and slowly near ``t = 1``, which puts more of a uniform time grid's steps close to the data.
Time runs from noise (``t = 0``) to data (``t = 1``), as everywhere in flowkit.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from flowkit.interfaces import Schedule
from flowkit.params import param

#: Distance kept from ``t = 1``, where ``beta_t = 0`` and the path's score (which divides by
#: ``beta_t^2``) is singular.
SINGULAR_EDGE = 1e-4


class PolynomialSchedule(Schedule):
    """``alpha_t = 1 - (1 - t)^p``, ``beta_t = (1 - t)^p``: the OT path, slowing down near the data.

    Derivatives: ``alpha'_t = p (1 - t)^(p - 1)``, ``beta'_t = -p (1 - t)^(p - 1)``. ``beta_1 = 0``, so
    ``t_range = [0, 1 - 1e-4]``. The prior is ``N(0, I)`` (``alpha_0 = 0``, ``beta_0 = 1``).
    """

    @attrs.define(frozen=True)
    class Params:
        power: float = param(
            2.0,
            doc="Exponent p of (1 - t)^p; 1 is the OT schedule, larger slows down near the data.",
            validator=[attrs.validators.ge(1.0), attrs.validators.le(8.0)],
        )

    def __init__(self, params: PolynomialSchedule.Params | None = None) -> None:
        super().__init__(params)
        self.power = float(self.params.power)
        self.t_range = (0.0, 1.0 - SINGULAR_EDGE)
        self.prior_std = 1.0

    def alpha(self, t: Tensor) -> Tensor:
        """``1 - (1 - t)^p``, shape ``(B,)``."""
        return 1.0 - self.beta(t)

    def beta(self, t: Tensor) -> Tensor:
        """``(1 - t)^p``, shape ``(B,)``."""
        return torch.pow(1.0 - t, self.power)

    def d_alpha(self, t: Tensor) -> Tensor:
        """``p (1 - t)^(p - 1)``, shape ``(B,)``."""
        return self.power * torch.pow(1.0 - t, self.power - 1.0)

    def d_beta(self, t: Tensor) -> Tensor:
        """``-p (1 - t)^(p - 1)``, shape ``(B,)``."""
        return -self.d_alpha(t)
