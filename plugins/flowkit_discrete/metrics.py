"""``total-variation``: the total variation distance between the empirical laws of two sets of token
sequences, ``TV = 1/2 sum_x |p(x) - q(x)|`` (between 0 and 1).

``over = "joint"`` compares whole sequences (right for a few tokens: a 2D grid's cells); ``"marginals"``
averages the distance of each token's law (sequences too long for their joint law to be estimated from
samples, e.g. 64 pixels). The engine's noise floor (fresh data against the same held-out set) says how
far two samples of the data itself are: a finite sample's TV is positive even for a perfect model.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import Metric
from flowkit.params import param


def _tokens(values: Tensor, what: str) -> Tensor:
    """``values (N, *D)`` as int64 ``(N, L)``; the engine hands metrics float32, which holds tokens
    below ``2^24`` exactly. Refuses values that are no tokens."""
    flat = values.reshape(values.shape[0], -1)
    if flat.is_floating_point():
        rounded = flat.round()
        if not bool(torch.isfinite(flat).all()) or not bool((rounded == flat).all()):
            raise CapabilityError(
                f"metric 'total-variation' compares categorical tokens, but the {what} hold non-integer "
                'values; use a continuous metric (e.g. metric = "w2") for continuous data'
            )
        flat = rounded
    return flat.long()


def _histogram_tv(samples: Tensor, reference: Tensor) -> float:
    """TV of the empirical laws of the rows of ``samples (N, L)`` and ``reference (M, L)``."""
    both = torch.cat([samples, reference])
    _, index = torch.unique(both, dim=0, return_inverse=True)
    states = int(index.max()) + 1
    p = torch.bincount(index[: len(samples)], minlength=states).double() / len(samples)
    q = torch.bincount(index[len(samples) :], minlength=states).double() / len(reference)
    return 0.5 * float((p - q).abs().sum())


class TotalVariation(Metric):
    """``1/2 sum |p - q|`` between the empirical laws of token sequences ``(N, *D)`` and ``(M, *D)``."""

    @attrs.define(frozen=True)
    class Params:
        over: Literal["joint", "marginals"] = param(
            "joint",
            doc="Compare whole sequences (joint) or the mean of each token's law (marginals).",
            validator=attrs.validators.in_(["joint", "marginals"]),
        )

    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        a, b = _tokens(samples, "samples"), _tokens(reference, "reference")
        if a.shape[1:] != b.shape[1:] or len(a) == 0 or len(b) == 0:
            raise CapabilityError(
                f"metric 'total-variation' needs two non-empty sets of sequences of one length, got "
                f"{tuple(samples.shape)} and {tuple(reference.shape)}"
            )
        if self.params.over == "joint":
            return _histogram_tv(a, b)
        return sum(_histogram_tv(a[:, i : i + 1], b[:, i : i + 1]) for i in range(a.shape[1])) / a.shape[1]
