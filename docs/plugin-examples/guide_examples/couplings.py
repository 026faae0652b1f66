"""A coupling: pair noise and data by the rank of their first coordinate (1D monotone transport)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowkit.interfaces import Coupling


class SortedCoupling(Coupling):
    """Reorders the noise so that the ``k``-th smallest first coordinate of ``x0`` meets the ``k``-th
    smallest of ``x1``: the monotone rearrangement, which is the optimal transport plan of 1D data for
    any convex cost. ``x1`` and ``labels`` stay in place (the data marginal is exact); no randomness."""

    def __call__(
        self, x0: Tensor, x1: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        rank0 = x0.flatten(1)[:, 0].argsort()
        rank1 = x1.flatten(1)[:, 0].argsort()
        paired = torch.empty_like(x0)
        paired[rank1] = x0[rank0]  # row rank1[k] of the data gets the k-th smallest noise
        return paired, x1, labels
