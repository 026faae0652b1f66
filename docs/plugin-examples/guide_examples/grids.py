"""A time grid: cosine spacing, fine steps at both ends."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowkit.interfaces import TimeGrid


class CosineGrid(TimeGrid):
    """``t_i = t_start + (t_end - t_start) (1 - cos(pi i / N)) / 2``: steps of order ``1 / N^2`` at both
    ends (near the noise and near the data) and ``pi / (2N)`` of the span in the middle."""

    def __call__(self, steps: int, t_start: float, t_end: float) -> Tensor:
        """Increasing float64 grid ``(steps + 1,)`` from exactly ``t_start`` to exactly ``t_end``."""
        i = torch.arange(steps + 1, dtype=torch.float64)
        grid = t_start + (t_end - t_start) * (1 - torch.cos(math.pi * i / steps)) / 2
        grid[0], grid[-1] = t_start, t_end  # no rounding at the ends
        return grid
