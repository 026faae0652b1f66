"""The geodesic 2-Wasserstein distance between two sample sets on a manifold.

``W2 = sqrt(mean matched d(x_i, y_sigma(i))^2)`` over the optimal assignment ``sigma`` of equal-size sets
(Birkhoff: an optimal coupling of two uniform empirical measures of equal size is a permutation),
found by scipy's ``linear_sum_assignment`` on the squared geodesic distances, in float64 on the CPU.
The engine's noise floor (fresh data against the same reference) uses the same metric.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import Metric
from flowkit.params import param
from flowkit_manifolds.geometry import MANIFOLDS, Manifold


def _points(points: Tensor, name: str, dim: int | None) -> np.ndarray:
    points = torch.as_tensor(points)
    if points.dim() != 2 or points.shape[0] == 0 or (dim is not None and points.shape[1] != dim):
        want = "(N, n)" if dim is None else f"(N, {dim})"
        raise FlowkitError(f"metric 'geodesic-w2': {name} must have shape {want}, got {tuple(points.shape)}")
    array = points.detach().to("cpu", torch.float64).numpy()
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise FlowkitError(
            f"metric 'geodesic-w2': {name} contain {bad} NaN or infinite values; the sampler or the "
            "model diverged (try more steps or a lower learning rate)"
        )
    return array


def _subsample(points: np.ndarray, size: int, seed: int) -> np.ndarray:
    if points.shape[0] <= size:
        return points
    rows = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))[:size].numpy()
    return points[rows]


def geodesic_w2(manifold: Manifold, x: np.ndarray, y: np.ndarray) -> float:
    """Exact geodesic W2 between equal-size sets ``x, y (n, d)`` on ``manifold``."""
    if x.shape[0] != y.shape[0]:
        raise FlowkitError(f"geodesic W2 needs sets of equal size, got {x.shape[0]} and {y.shape[0]}")
    cost = manifold.distance_matrix(x, y) ** 2
    rows, cols = linear_sum_assignment(cost)
    return math.sqrt(float(cost[rows, cols].mean()))


class GeodesicW2(Metric):
    """Exact 2-Wasserstein distance with the geodesic cost of the sphere or the flat torus.

    Sets larger than ``max_points``, or of unequal sizes, are first subsampled without replacement
    (seeded, the same seed for both) to ``min(N, M, max_points)`` points each. Like the Euclidean
    ``w2`` it is biased upwards at finite size; compare it with its noise floor.
    """

    @attrs.define(frozen=True)
    class Params:
        manifold: Literal["sphere", "torus"] = param(
            "sphere",
            doc="The manifold whose geodesic distance is the cost: sphere or torus.",
            validator=attrs.validators.in_(tuple(MANIFOLDS)),
        )
        max_points: int = param(
            2000,
            doc="Points of each set used (subsampled, seeded); cost grows as n^3.",
            validator=attrs.validators.gt(0),
        )
        seed: int = param(0, doc="Seed of the subsampling.", validator=attrs.validators.ge(0))

    def memory_bytes(self, n: int, m: int, dim: int) -> int:
        size = min(n, m, self.params.max_points)
        return (3 + dim) * 8 * size * size  # the distances (the torus's per-coordinate too) and copies

    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        x = _points(samples, "samples", None)
        y = _points(reference, "reference", x.shape[1])
        size = min(x.shape[0], y.shape[0], self.params.max_points)
        seed = self.params.seed
        return geodesic_w2(
            MANIFOLDS[self.params.manifold], _subsample(x, size, seed), _subsample(y, size, seed)
        )
