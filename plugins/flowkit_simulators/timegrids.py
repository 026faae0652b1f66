"""Time grids for fixed-step simulators: ``uniform`` and ``power``.

A grid is an increasing float64 tensor of ``steps + 1`` times whose first and last entries are exactly
``t_start`` and ``t_end`` (the simulator casts it to the dtype of the state).
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from flowkit.errors import ConfigError
from flowkit.interfaces import TimeGrid
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
