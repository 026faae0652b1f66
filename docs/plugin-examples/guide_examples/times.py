"""A time distribution: Beta(a, b) with whole-number a and b, drawn as an order statistic."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from flowkit.interfaces import TimeDistribution
from flowkit.params import param


class BetaTime(TimeDistribution):
    """``u ~ Beta(a, b)``: the ``a``-th smallest of ``a + b - 1`` uniforms (whole ``a, b >= 1``), so the
    draws come from the generator given (``torch.distributions.Beta`` takes none). Mean ``a / (a + b)``;
    ``a = b = 2`` favours the middle of the path, ``a = 1, b = 1`` is uniform."""

    @attrs.define(frozen=True)
    class Params:
        a: int = param(
            2, doc="First shape parameter (weight towards t = 1).", validator=attrs.validators.ge(1)
        )
        b: int = param(
            2, doc="Second shape parameter (weight towards t = 0).", validator=attrs.validators.ge(1)
        )

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` times ``(n,)`` in ``[0, 1]``."""
        a, b = self.params.a, self.params.b
        uniforms = torch.rand((n, a + b - 1), generator=generator, device=device, dtype=dtype)
        return uniforms.sort(dim=1).values[:, a - 1]
