"""Couplings of noise and data for conditional flow matching (``docs/math.md``, "Couplings").

Every coupling takes ``x0 (B, *D)`` (noise), ``x1 (B, *D)`` (data), optional labels ``y (B,)`` of the data
and a generator, and returns the pairs ``(x0', x1, y)``: the data and its labels stay in place and
the noise is reordered (``exact-ot``) or resampled from a plan (``sinkhorn``), so the data marginal of
every batch is exact. The cost is the squared Euclidean distance of the flattened points.

With labels, ``exact-ot`` and ``sinkhorn`` pair only within a class: noise slot ``i`` belongs to the
class of the data point drawn with it (``y[i]``), which is a uniformly random subset of the
i.i.d. noise, so the noise each class receives is still distributed as ``p_init``. (Pairing across
classes would hand each class the noise nearest its own data: a class-conditional model would then
be trained from a biased prior.) Labelled datasets (``digits``, ``images`` with labels) give them with the
data.

``exact-ot`` uses POT's network simplex (``ot.emd``) where POT is installed, else scipy's
``linear_sum_assignment``; both reach the same optimal cost and run on the host in float64. Its call
splits into :meth:`ExactOT.solve` (the permutation: reads its inputs, draws nothing; both solvers release
the GIL) and :meth:`ExactOT.pair`, and it says ``background = True``: the training loop solves batch
``k + 1`` on a worker thread while step ``k`` trains (``docs/design.md``, "Pairing a step ahead"). The
measurements behind these choices are in ``benchmarks/reference/contract-notes.md`` and
``benchmarks/reference/couplings.md``.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import Coupling
from flowkit.params import param

Method = Literal["auto", "emd", "scipy"]


def check_batch(x0: Tensor, x1: Tensor, y: Tensor | None, name: str) -> None:
    """Raise :class:`FlowkitError` unless ``x0`` and ``x1`` are ``(B, *D)`` alike and ``y`` ``(B,)``."""
    if x0.shape != x1.shape or x0.dim() < 2:
        raise FlowkitError(
            f"coupling '{name}': noise and data must have the same shape (B, *D), got "
            f"{tuple(x0.shape)} and {tuple(x1.shape)}"
        )
    if y is not None and tuple(y.shape) != (x1.shape[0],):
        raise FlowkitError(
            f"coupling '{name}': labels y must have shape (B,) = ({x1.shape[0]},), got {tuple(y.shape)}"
        )


def squared_distances(x1: Tensor, x0: Tensor) -> Tensor:
    """``C[j, i] = ||x1_j - x0_i||^2`` of the flattened points, ``(B, B)``, on their device.

    Expanded as ``|x1|^2 + |x0|^2 - 2 x1 . x0`` (one matmul) and clamped at 0 against rounding; in the
    inputs' precision even inside a mixed-precision region (the loss runs under the backend's autocast).
    """
    a, b = x1.reshape(x1.shape[0], -1), x0.reshape(x0.shape[0], -1)
    with torch.autocast(device_type=a.device.type, enabled=False):
        cost = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return cost.clamp_min_(0.0)


def class_blocks(y: Tensor | None, n: int) -> list[Tensor] | None:
    """Index sets ``(n_c,)`` of each class present in ``y`` (``None`` without labels)."""
    if y is None:
        return None
    return [torch.nonzero(y == c).flatten() for c in torch.unique(y)]


def check_source_labels(y0: Tensor, y: Tensor | None, x0: Tensor, name: str) -> Tensor:
    """The data labels ``y``, checked beside the source labels ``y0 (B,)`` of a labelled source."""
    if y is None:
        raise FlowkitError(
            f"coupling '{name}': source labels y0 were given without the data's labels y; label-aware "
            "pairing needs both ends labelled"
        )
    if tuple(y0.shape) != (x0.shape[0],):
        raise FlowkitError(
            f"coupling '{name}': source labels y0 must have shape (B,) = ({x0.shape[0]},), got "
            f"{tuple(y0.shape)}"
        )
    return y


def missing_class(y0: Tensor, y: Tensor, name: str) -> None:
    """Raise :class:`FlowkitError` when a class of the data ``y`` has no source point in ``y0``."""
    absent = sorted(set(torch.unique(y).tolist()) - set(torch.unique(y0).tolist()))
    if absent:
        count = int((y == absent[0]).sum())
        raise FlowkitError(
            f"coupling '{name}': the source batch has no point of class {absent[0]}, which {count} data "
            "points of the batch have; raise [train] batch_size so that every class is drawn at both ends"
        )


def matched_assignment(cost: np.ndarray, y0: Tensor, y: Tensor, name: str) -> Tensor:
    """``index (B,)``: data point ``j`` is paired with source point ``index[j]`` of its own class
    (``y0[index[j]] == y[j]``), minimising the total cost within each class.

    A class with as many source points as data points gets a permutation; with more, each data point
    its own distinct source point (a rectangular assignment); with fewer, the source points are
    repeated (each used at most ``ceil(n_data / n_source)`` times), since the classes' counts in two
    independent batches differ."""
    missing_class(y0, y, name)
    from scipy.optimize import linear_sum_assignment

    index = torch.empty(y.shape[0], dtype=torch.int64)
    source_labels, data_labels = y0.cpu(), y.cpu()
    for c in torch.unique(data_labels):
        rows = torch.nonzero(data_labels == c).flatten()
        columns = torch.nonzero(source_labels == c).flatten()
        repeats = -(-len(rows) // len(columns))
        tiled = columns.repeat(repeats)
        _, chosen = linear_sum_assignment(cost[np.ix_(rows.numpy(), tiled.numpy())])
        index[rows] = tiled[torch.from_numpy(np.asarray(chosen, dtype=np.int64))]
    return index


def have_pot() -> bool:
    """Whether POT (``ot``) is importable."""
    return importlib.util.find_spec("ot") is not None


def assignment(cost: np.ndarray, method: Literal["emd", "scipy"]) -> np.ndarray:
    """The optimal permutation ``perm (n,)`` of ``cost (n, n)``: row ``j`` is paired with column
    ``perm[j]``, minimising ``sum_j cost[j, perm[j]]``."""
    n = cost.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if method == "emd":
        import ot

        weights = np.full(n, 1.0 / n)
        # A vertex of the assignment polytope: a permutation matrix scaled by 1/n.
        plan = ot.emd(weights, weights, cost, numItermax=max(100_000, 50 * n * n))
        return np.asarray(plan.argmax(axis=1), dtype=np.int64)
    from scipy.optimize import linear_sum_assignment

    _, columns = linear_sum_assignment(cost)
    return np.asarray(columns, dtype=np.int64)


class Independent(Coupling):
    """The independent coupling ``p_init x p_data``: pairs as drawn (returns its inputs)."""

    independent = True

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x0, x1, y)`` unchanged."""
        return x0, x1, y


class ExactOT(Coupling):
    """Minibatch optimal transport: the permutation of the noise minimising ``sum_j ||x0_perm(j) - x1_j||^2``.

    Exact (an optimal vertex of the assignment problem), solved on the host in float64 by ``method``:
    ``emd`` (POT's network simplex), ``scipy`` (``linear_sum_assignment``) or ``auto`` (``emd`` where POT
    is installed, the faster of the two: ``benchmarks/reference/contract-notes.md``). Cost ``O(B^2)``
    memory and roughly ``O(B^2)``-``O(B^3)`` time; the training loop runs it on a worker thread beside
    the previous step. With labels, one assignment per class. Draws no random numbers.

    Both ends labelled (a source dataset with labels ``y0`` beside the data's ``y``): each data point is
    paired only with a source point of its own class (:func:`matched_assignment`), the optimal such
    assignment per class (torchcfm's ``sample_plan_with_labels`` restricted to one class, as C²OT's
    condition-aware cost with an infinite penalty).
    """

    matches_source_labels = True

    @attrs.define(frozen=True)
    class Params:
        method: Method = param(
            "auto",
            doc="Assignment solver: auto (POT's emd if installed, else scipy), emd, scipy.",
            validator=attrs.validators.in_(["auto", "emd", "scipy"]),
        )

    def __init__(self, params: ExactOT.Params | None = None) -> None:
        super().__init__(params)
        method = self.params.method
        if method == "emd" and not have_pot():
            raise CapabilityError(
                "coupling 'exact-ot': method = \"emd\" needs POT (pip install pot); "
                'use method = "scipy" or "auto"'
            )
        self.method: Literal["emd", "scipy"] = (
            ("emd" if have_pot() else "scipy") if method == "auto" else method
        )

    #: The solve (a host solver that releases the GIL; ``benchmarks/reference/couplings.md``) runs on the
    #: training loop's worker thread, a step ahead.
    background = True

    def permutation(
        self, x0: Tensor, x1: Tensor, y: Tensor | None = None, *, y0: Tensor | None = None
    ) -> Tensor:
        """Indices ``perm (B,)`` (on ``x0``'s device) such that ``x0[perm]`` is paired with ``x1``."""
        return self.solve(x0, x1, y, y0=y0).to(x0.device)

    def solve(self, x0: Tensor, x1: Tensor, y: Tensor | None = None, *, y0: Tensor | None = None) -> Tensor:
        """The optimal ``perm (B,)``, int64 on the host (thread-safe: reads its inputs, draws nothing).
        With the source's labels ``y0 (B,)``, an index that pairs within each class (may repeat)."""
        check_batch(x0, x1, y, "exact-ot")
        # float64 on the host, where the solver runs: float32 costs would misorder near-ties.
        host = [x.detach().to("cpu", torch.float64) for x in (x1, x0)]
        cost = squared_distances(host[0], host[1]).numpy()
        if y0 is not None:
            return matched_assignment(cost, y0, check_source_labels(y0, y, x0, "exact-ot"), "exact-ot")
        blocks = class_blocks(y, x1.shape[0])
        if blocks is None:
            perm = torch.from_numpy(assignment(cost, self.method))
        else:
            perm = torch.empty(x1.shape[0], dtype=torch.int64)
            for index in blocks:
                ix = index.cpu()
                sub = cost[np.ix_(ix.numpy(), ix.numpy())]
                perm[ix] = ix[torch.from_numpy(assignment(sub, self.method))]
        return perm

    def pair(
        self,
        solution: Tensor,
        x0: Tensor,
        x1: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        y0: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x0[perm], x1, y)`` for ``perm = solve(x0, x1, y, y0=y0)``."""
        return x0[solution.to(x0.device)], x1, y

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        y0: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x0[perm], x1, y)`` for the optimal ``perm`` (within each class, given labels ``y``; with the
        source's labels ``y0`` too, each data point with a source point of its class)."""
        return self.pair(self.solve(x0, x1, y, y0=y0), x0, x1, y)


def sinkhorn_log_plan(
    cost: Tensor, epsilon: float, iterations: int, tolerance: float, mask: Tensor | None = None
) -> tuple[Tensor, int]:
    """The log of the entropic plan ``log pi (B, B)`` with uniform marginals ``1/B``, and the iterations run.

    Sinkhorn in the log domain, ``log pi = f_j + g_i - C_ji / eps`` (dimensionless potentials ``f``,
    ``g``), stabilised by absorption (Schmitzer 2019): every 20 iterations the potentials absorb the
    scalings ``u``, ``v`` and the kernel ``K = exp(f_j + g_i - C_ji / eps)`` is recomputed; in between,
    an iteration is two matrix-vector products, ``u = (1/B) / (K v)``, ``v = (1/B) / (K^T u)``, instead
    of two log-sum-exps (much faster per iteration: ``benchmarks/reference/contract-notes.md``). The
    potentials start at the row minima and their c-transform, so no row or column of ``K`` underflows
    for any ``eps``; where the scalings would still overflow, the block falls back to exact log-domain
    updates. ``mask`` (bool ``(B, B)``) forbids pairs (other classes): their cost is infinite. Stops
    when the row marginals are within ``tolerance`` (mean relative error; the columns are exact after
    each ``v`` update; one more matrix-vector product), checked at each absorption (one host sync), or
    after ``iterations``.
    """
    n = cost.shape[0]
    scaled = cost / epsilon
    if mask is not None:
        scaled = scaled.masked_fill(~mask, float("inf"))
    target = 1.0 / n
    f = scaled.min(dim=1).values
    g = (scaled - f[:, None]).min(dim=0).values
    done = 0
    while done < iterations:
        block = min(20, iterations - done)
        kernel = torch.exp(f[:, None] + g[None, :] - scaled)
        u = torch.ones_like(f)
        v = torch.ones_like(g)
        for _ in range(block):
            u = target / (kernel @ v)
            v = target / (kernel.T @ u)
        rows = u * (kernel @ v)
        if bool(torch.isfinite(rows).all() & (u > 0).all() & (v > 0).all()):
            f, g = f + torch.log(u), g + torch.log(v)
        else:  # the scalings left float range: the same block as exact log-domain updates
            for _ in range(block):
                f = -math.log(n) - torch.logsumexp(g[None, :] - scaled, dim=1)
                g = -math.log(n) - torch.logsumexp(f[:, None] - scaled, dim=0)
            rows = torch.logsumexp(f[:, None] + g[None, :] - scaled, dim=1).exp()
        done += block
        if float((rows * n - 1.0).abs().mean()) < tolerance:
            break
    return f[:, None] + g[None, :] - scaled, done


class Sinkhorn(Coupling):
    """Entropic optimal transport: pairs sampled from the plan ``pi`` minimising ``<pi, C> - eps H(pi)``.

    ``C`` is the squared Euclidean cost; ``epsilon`` is in its units (for Schrödinger-bridge CFM with
    noise ``sigma``, ``epsilon = 2 sigma^2``). The plan comes from log-domain Sinkhorn on the batch's
    device (:func:`sinkhorn_log_plan`); each data point ``x1_j`` then gets the noise ``x0_i`` with
    probability ``pi_ji / sum_i pi_ji`` (Gumbel-max with ``generator``), so the data are kept and the
    noise is resampled with replacement (its marginal is uniform over the batch up to the Sinkhorn
    tolerance). ``epsilon -> 0`` approaches ``exact-ot``, ``epsilon -> inf`` the independent coupling.
    With labels, the plan forbids pairs across classes; with the source's labels ``y0`` beside the
    data's ``y`` (both ends labelled), it forbids a data point a source point of another class (the
    plan's marginals are then uniform only as far as the classes' counts in the two batches agree).
    """

    matches_source_labels = True

    @attrs.define(frozen=True)
    class Params:
        epsilon: float = param(
            0.05,
            doc="Entropic regularisation, in units of the squared distance.",
            validator=attrs.validators.gt(0),
        )
        iterations: int = param(
            200, doc="Most Sinkhorn iterations per batch.", validator=attrs.validators.gt(0)
        )
        tolerance: float = param(
            1e-3,
            doc="Stop when the plan's marginals are within this (mean relative error) of uniform.",
            validator=attrs.validators.gt(0),
        )

    #: Iterations the last batch needed.
    last_iterations: int = 0

    def log_plan(
        self, x0: Tensor, x1: Tensor, y: Tensor | None = None, *, y0: Tensor | None = None
    ) -> Tensor:
        """``log pi (B, B)``: rows are data points, columns noise; each row sums to ``1/B``."""
        cost = squared_distances(x1.detach().float(), x0.detach().float())
        mask: Tensor | None = None
        if y0 is not None:
            labels = check_source_labels(y0, y, x0, "sinkhorn")
            missing_class(y0, labels, "sinkhorn")
            mask = labels[:, None] == y0[None, :]
        elif y is not None:
            mask = y[:, None] == y[None, :]
        p = self.params
        log_plan, self.last_iterations = sinkhorn_log_plan(cost, p.epsilon, p.iterations, p.tolerance, mask)
        return log_plan

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        y0: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x0[idx], x1, y)`` with ``idx_j ~ pi(. | x1_j)``."""
        return self.pair(self.solve(x0, x1, y, y0=y0), x0, x1, y, generator)

    def solve(self, x0: Tensor, x1: Tensor, y: Tensor | None = None, *, y0: Tensor | None = None) -> Tensor:
        """The plan's log, ``log pi (B, B)`` (:meth:`log_plan`); draws nothing."""
        check_batch(x0, x1, y, "sinkhorn")
        return self.log_plan(x0, x1, y, y0=y0)

    def pair(
        self,
        solution: Tensor,
        x0: Tensor,
        x1: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        y0: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x0[idx], x1, y)`` with ``idx_j ~ pi(. | x1_j)`` for ``solution = log pi``: one
        Gumbel-max draw per data point from ``generator``."""
        log_plan = solution
        uniform = torch.rand(
            log_plan.shape, generator=generator, device=log_plan.device, dtype=log_plan.dtype
        )
        gumbel = -torch.log(-torch.log(uniform.clamp_min_(1e-20)))
        index = torch.argmax(log_plan + gumbel, dim=1)
        return x0[index], x1, y
