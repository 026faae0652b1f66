"""Distances between two sample sets, computed in float64 on the CPU.

* ``w2``: the exact 2-Wasserstein distance between the two empirical distributions (optimal
  assignment of equal-size sets). Cost O(n^3) in time, O(n^2) in memory: at most ``max_points``
  points of each set are used.
* ``sliced-w2``: the sliced 2-Wasserstein distance, ``sqrt(mean over directions of W2^2 of the 1D
  projections)``, with directions uniform on the sphere (seeded). Exact for unequal sizes.
* ``energy``: the energy distance of the empirical distributions (V-statistic), reported as a distance
  (the square root), so it has the units of the data like the two others.

All take ``samples (N, *D)`` and ``reference (M, *D)`` with the same event shape ``D``, flatten the
event, and raise a :class:`FlowkitError` on non-finite values (a diverged sampler must not produce a
silent NaN score).
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import Metric
from flowkit.params import param


def as_points(samples: Tensor, reference: Tensor, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as float64 CPU arrays ``(N, d)`` and ``(M, d)``, ``d = prod(D)``; checks them."""
    samples, reference = torch.as_tensor(samples), torch.as_tensor(reference)
    arrays = []
    for name, points in (("samples", samples), ("reference", reference)):
        if points.dim() < 2 or points.shape[0] == 0:
            raise FlowkitError(
                f"metric '{metric}': {name} must have shape (N, *D) with N >= 1, got {tuple(points.shape)}"
            )
        if name == "reference" and tuple(samples.shape[1:]) != tuple(reference.shape[1:]):
            raise FlowkitError(
                f"metric '{metric}': samples have event shape {tuple(samples.shape[1:])} but the "
                f"reference has {tuple(reference.shape[1:])}; both sets must come from the same space"
            )
        array = points.detach().to("cpu", torch.float64).reshape(points.shape[0], -1).numpy()
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise FlowkitError(
                f"metric '{metric}': {name} contain {bad} NaN or infinite values; the sampler or the "
                "model diverged (try more steps, a smaller step size or a lower learning rate)"
            )
        arrays.append(array)
    return arrays[0], arrays[1]


def subsample(points: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` rows of ``points`` chosen without replacement by a generator seeded with ``seed``.

    The full set (in its order) when it has at most ``size`` rows.
    """
    if points.shape[0] <= size:
        return points
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(points.shape[0], generator=generator)[:size].numpy()
    return points[rows]


def exact_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W2 between the uniform empirical measures of equal-size sets ``x, y (n, d)``.

    For equal sizes an optimal coupling is a permutation (Birkhoff), found by scipy's assignment
    solver on the squared-distance matrix; ``W2 = sqrt(mean matched squared distance)``.

    Two transformations leave the optimal permutation unchanged and make the solver several times
    faster on shifted sets: centring both sets (``|x - y|^2 = |mx - my|^2 + |x' - y'|^2 + 2 (mx - my)
    . (x' - y')``, whose last term sums to zero over any permutation) and subtracting row and column
    minima (which adds the same constant to every permutation's cost). The distance is then computed
    from the original points.
    """
    if x.shape[0] != y.shape[0]:
        raise FlowkitError(f"exact W2 needs sets of equal size, got {x.shape[0]} and {y.shape[0]}")
    cost = cdist(x - x.mean(axis=0), y - y.mean(axis=0), "sqeuclidean")
    cost -= cost.min(axis=1, keepdims=True)
    cost -= cost.min(axis=0, keepdims=True)
    rows, cols = linear_sum_assignment(cost)
    matched = np.sum((x[rows] - y[cols]) ** 2, axis=1)
    return math.sqrt(float(matched.mean()))


def sliced_w2(x: np.ndarray, y: np.ndarray, directions: np.ndarray) -> float:
    """Sliced W2 of ``x (N, d)`` and ``y (M, d)`` over unit ``directions (d, L)``.

    ``sqrt(mean_l W2^2(x . theta_l, y . theta_l))``; each 1D W2^2 is the exact integral
    ``int_0^1 (F^-1(u) - G^-1(u))^2 du`` of the piecewise constant quantile functions, whose
    breakpoints are the union of ``{i / N}`` and ``{j / M}`` (equal rationals give equal doubles, so
    the union is exact).
    """
    px = np.sort(x @ directions, axis=0)
    py = np.sort(y @ directions, axis=0)
    n, m = px.shape[0], py.shape[0]
    if n == m:
        per_direction = np.mean((px - py) ** 2, axis=0)
    else:
        ends = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
        widths = np.diff(ends, prepend=0.0)
        middles = ends - widths / 2
        ix = np.minimum((middles * n).astype(np.int64), n - 1)
        iy = np.minimum((middles * m).astype(np.int64), m - 1)
        per_direction = widths @ (px[ix] - py[iy]) ** 2
    return math.sqrt(max(float(np.mean(per_direction)), 0.0))


def _mean_distance(x: np.ndarray, y: np.ndarray, block: int = 1024) -> float:
    """``mean_{i,j} |x_i - y_j|`` over all pairs, in row blocks so memory stays O(block * M)."""
    total = 0.0
    for start in range(0, x.shape[0], block):
        total += float(cdist(x[start : start + block], y, "euclidean").sum())
    return total / (x.shape[0] * y.shape[0])


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance ``sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|)`` of the empirical measures.

    V-statistic (the means include the zero diagonal): it is the energy distance between the two
    empirical distributions, so it is >= 0, exactly 0 for identical sets and > 0 otherwise (unlike the
    unbiased U-statistic, which can be negative).
    """
    squared = 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)
    return math.sqrt(max(squared, 0.0))


_POSITIVE = attrs.validators.gt(0)
_SEED = attrs.validators.ge(0)


class W2(Metric):
    """Exact 2-Wasserstein distance between the empirical distributions.

    Sets larger than ``max_points``, or of unequal sizes, are first subsampled without replacement
    (seeded, so deterministic; the same seed for both sets, so identical sets stay identical) to
    ``min(N, M, max_points)`` points each. Finite-sample W2 is biased
    upwards: two independent samples of the same distribution are at a positive distance, which
    shrinks like ``n^(-1/d)`` (``n^(-1/2)`` up to logs in 2D), so compare runs at the same size.
    2,000 vs 2,000 points takes about a second.
    """

    @attrs.define(frozen=True)
    class Params:
        max_points: int = param(
            2000, doc="Points of each set used (subsampled, seeded); cost grows as n^3.", validator=_POSITIVE
        )
        seed: int = param(0, doc="Seed of the subsampling.", validator=_SEED)

    def memory_bytes(self, n: int, m: int, dim: int) -> int:
        size = min(n, m, self.params.max_points)
        return 3 * 8 * size * size  # the float64 cost matrix and the assignment solver's copies

    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        x, y = as_points(samples, reference, "w2")
        size = min(x.shape[0], y.shape[0], self.params.max_points)
        return exact_w2(subsample(x, size, self.params.seed), subsample(y, size, self.params.seed))


class SlicedW2(Metric):
    """Sliced 2-Wasserstein distance ``sqrt(E_theta W2^2(theta . X, theta . Y))``.

    ``num_projections`` directions uniform on the unit sphere, drawn from a generator seeded with
    ``seed`` (deterministic). Never larger than the exact W2 for equal-size sets (projections are
    1-Lipschitz); for a shift ``m`` between otherwise equal distributions it is ``|m| / sqrt(d)``.
    Handles unequal sizes exactly; O((N + M) L log(N + M)).
    """

    @attrs.define(frozen=True)
    class Params:
        num_projections: int = param(256, doc="Number of random directions.", validator=_POSITIVE)
        seed: int = param(0, doc="Seed of the random directions.", validator=_SEED)

    def directions(self, dim: int) -> np.ndarray:
        """Unit directions ``(dim, num_projections)``, float64, deterministic for a seed."""
        generator = torch.Generator().manual_seed(self.params.seed)
        theta = torch.randn(dim, self.params.num_projections, generator=generator, dtype=torch.float64)
        return (theta / theta.norm(dim=0, keepdim=True)).numpy()

    def memory_bytes(self, n: int, m: int, dim: int) -> int:
        return 2 * 8 * (n + m) * (dim + self.params.num_projections)  # the projections, and sorted

    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        x, y = as_points(samples, reference, "sliced-w2")
        return sliced_w2(x, y, self.directions(x.shape[1]))


class Energy(Metric):
    """Energy distance (V-statistic, square root): ``sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|)``.

    0 exactly for identical sets, positive otherwise. Sets larger than ``max_points`` are subsampled
    without replacement (seeded). Cost O(N M) time, O(block * M) memory.
    """

    @attrs.define(frozen=True)
    class Params:
        max_points: int = param(
            5000, doc="Points of each set used at most (subsampled, seeded).", validator=_POSITIVE
        )
        seed: int = param(0, doc="Seed of the subsampling.", validator=_SEED)

    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        x, y = as_points(samples, reference, "energy")
        limit, seed = self.params.max_points, self.params.seed
        return energy_distance(subsample(x, limit, seed), subsample(y, limit, seed))
