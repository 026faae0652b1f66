"""A metric: the distance between the means of two sample sets."""

from __future__ import annotations

from torch import Tensor

from flowkit.interfaces import Metric


class MeanGap(Metric):
    """``||mean(samples) - mean(reference)||_2`` over the flattened ``(N, *D)`` and ``(M, *D)``: 0 for
    sets with the same mean, so a first check (a drift, a shift), never proof of a match."""

    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        gap = samples.flatten(1).double().mean(0) - reference.flatten(1).double().mean(0)
        return float(gap.norm())
