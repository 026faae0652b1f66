"""Dynamics: the flow plus a swirl that leaves every marginal ``p_t`` unchanged."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import ODE, BuildContext, per_sample
from flowkit.params import param

Field = Callable[[Tensor, Tensor], Tensor]


def rotate(x: Tensor) -> Tensor:
    """``J x`` for ``x (B, *D)``: each coordinate pair ``(a, b)`` becomes ``(-b, a)`` (``J^T = -J``)."""
    pairs = x.reshape(x.shape[0], -1, 2)
    return pairs.flip(-1).mul(pairs.new_tensor([-1.0, 1.0])).reshape(x.shape)


class SwirlFlow(ODE):
    """``dX = [u_t(X) + c (1 - t)^2 J grad log p_t(X)] dt`` with ``J`` a quarter turn per coordinate pair.

    The swirl adds ``div(p_t c_t J grad log p_t) = c_t div(J grad p_t) = 0`` to the continuity
    equation (``J`` is constant and antisymmetric), so the marginals are those of the flow for any
    ``c``; ``(1 - t)^2`` keeps it bounded where the score grows like ``1 / (1 - t)^2``, near the data.
    """

    needs = frozenset({"velocity", "score"})

    @attrs.define(frozen=True)
    class Params:
        swirl: float = param(1.0, doc="Strength c of the swirl (0: the flow ODE).")

    def __init__(self, params: Any = None, *, velocity: Field, score: Field) -> None:
        super().__init__(params)
        self.velocity, self.score = velocity, score

    @classmethod
    def from_params(cls, params: SwirlFlow.Params, context: BuildContext) -> SwirlFlow:
        if math.prod(context.data_shape) % 2:
            raise CapabilityError(
                f"dynamics 'swirl' turns coordinate pairs; the data has shape "
                f"{context.data_shape}, an odd number of values"
            )
        needed_by = "dynamics 'swirl'"
        flow = cls(
            params, velocity=context.role("velocity", needed_by), score=context.role("score", needed_by)
        )  # converted through a Gaussian path
        flow.constraint = context.path
        return flow

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        strength = self.params.swirl * per_sample(1 - t, x) ** 2
        return self.velocity(x, t) + strength * rotate(self.score(x, t))
