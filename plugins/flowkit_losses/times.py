"""Distributions of training times (the kind ``time``): ``uniform`` and ``logit-normal``.

Each draws ``u`` in ``[0, 1]``; a loss maps it onto its path's ``t_range``.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from flowkit.interfaces import TimeDistribution
from flowkit.params import param


class UniformTime(TimeDistribution):
    """``u ~ U[0, 1)``: one ``torch.rand`` draw per time."""

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` uniform times, ``(n,)``."""
        return torch.rand((n,), generator=generator, device=device, dtype=dtype)


class LogitNormalTime(TimeDistribution):
    """``u = sigmoid(mean + std * N(0, 1))``: favours the middle of the path (Esser et al. 2024)."""

    @attrs.define(frozen=True)
    class Params:
        mean: float = param(0.0, doc="Mean of the normal whose sigmoid is the time.")
        std: float = param(
            1.0,
            doc="Standard deviation of the normal whose sigmoid is the time.",
            validator=attrs.validators.gt(0.0),
        )

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` logit-normal times, ``(n,)``."""
        normal = torch.randn((n,), generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(self.params.mean + self.params.std * normal)
