"""Log-likelihood by the instantaneous change of variables (docs/math.md, "Likelihood").

For an ODE ``dX_t = u_t(X_t) dt`` carrying ``p_init`` at ``t_lo`` to the model at ``t_hi``,
``log p_hi(x) = log p_init(x_lo) - int_{t_lo}^{t_hi} div u_t(x_t) dt``, where ``x_t`` is the flow's
trajectory through ``x`` integrated backwards. Any simulator of the contract integrates it: the
augmented state ``(x, l)`` runs in reversed time ``s = t_lo + t_hi - t`` (so the grid increases, as
every simulator expects) with ``dx/ds = -u_t(x)`` and ``dl/ds = div u_t(x)``; at the end
``l = int div u dt``.

The divergence is exact (one vector-Jacobian product per dimension) or Hutchinson's estimate
``eps^T (du/dx) eps`` with ``probes`` Rademacher or Gaussian vectors per point, drawn once and kept
along each trajectory (so each probe's integral is an unbiased estimate of the exact one).

Nothing here names a concrete path, model or simulator: the ODE is whatever dynamics the settings
build (``flow`` by default: a velocity, or a score converted through a Gaussian path, which is the
probability-flow ODE), the prior's log-density is ``ProbabilityPath.prior_log_prob``, and the known
density of the data, where there is one, ``Dataset.log_prob``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import ODE, SDE, Simulator, check_pair

if TYPE_CHECKING:
    from flowkit.engine.records import Pipeline
    from flowkit.engine.sections import DequantizeSection, LikelihoodSection

Estimator = Literal["exact", "hutchinson"]
Noise = Literal["rademacher", "gaussian"]


def _divergence_exact(velocity: Tensor, x: Tensor) -> Tensor:
    """``div u = sum_i du_i/dx_i`` by one vector-Jacobian product per dimension; ``(B, 1)``.

    ``velocity (B, *D)`` was computed from ``x (B, *D)`` (which requires grad); samples must not
    interact (a network in eval mode), so the VJP of ``sum_b u_i(x_b)`` gives each sample's row.
    """
    batch = x.shape[0]
    flat = velocity.reshape(batch, -1)
    dim = flat.shape[1]
    div = torch.zeros(batch, dtype=flat.dtype, device=flat.device)
    for i in range(dim):
        (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < dim - 1)
        div += grad.reshape(batch, -1)[:, i]
    return div[:, None]


def _divergence_hutchinson(velocity: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson's ``eps_k^T (du/dx) eps_k`` for each probe ``eps_k``; ``probes (B, m, D)`` →
    ``(B, m)``. One vector-Jacobian product per probe."""
    batch, count = probes.shape[0], probes.shape[1]
    out = []
    for k in range(count):
        eps = probes[:, k]
        (grad,) = torch.autograd.grad(
            velocity, x, grad_outputs=eps.view_as(velocity), retain_graph=k < count - 1
        )
        out.append((grad.reshape(batch, -1) * eps).sum(dim=1))
    return torch.stack(out, dim=1)


class ChangeOfVariables(ODE):
    """The augmented ODE of the instantaneous change of variables, in reversed time.

    State ``y (B, D + m)``: the flattened point ``x`` and ``m`` accumulated divergence integrals (one
    for the exact divergence, one per probe for Hutchinson's). At reversed time ``s`` (``t = t_lo +
    t_hi - s``): ``dy/ds = (-u_t(x), div u_t(x))``. The divergence is computed with autograd inside
    :meth:`drift` (which enables grad), and every output is detached, so no graph outlives a step.
    """

    def __init__(
        self,
        dynamics: ODE,
        shape: tuple[int, ...],
        t_lo: float,
        t_hi: float,
        probes: Tensor | None = None,
    ) -> None:
        super().__init__(dynamics.params)
        self.dynamics = dynamics
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        self.t_sum = float(t_lo) + float(t_hi)
        #: ``(B, m, D)`` Hutchinson probes, fixed along the trajectories, or ``None`` for exact.
        self.probes = probes

    @property
    def projects(self) -> bool:
        """Whether the dynamics project their states (a path on a manifold): then so does this ODE."""
        return self.dynamics.projects

    def project(self, y: Tensor) -> Tensor:
        """The point's part of ``y`` projected as the dynamics project it, the integrals untouched: the
        reversed flow stays on the manifold where the forward one does."""
        batch = y.shape[0]
        x = self.dynamics.project(y[:, : self.dim].reshape(batch, *self.shape))
        return torch.cat([x.reshape(batch, -1), y[:, self.dim :]], dim=1)

    def drift(self, y: Tensor, s: Tensor) -> Tensor:
        """``(-u_t(x), div u_t(x))`` at reversed time ``s (B,)``; ``y`` and the result ``(B, D + m)``."""
        batch = y.shape[0]
        # A simulator's `ts[i].expand(B)` (stride 0) stays one time for the whole batch.
        t = (self.t_sum - s[:1]).expand(batch) if s.dim() == 1 and s.stride(0) == 0 else self.t_sum - s
        with torch.enable_grad():
            x = y[:, : self.dim].detach().reshape(batch, *self.shape).requires_grad_(True)
            velocity = self.dynamics.drift(x, t)
            if self.probes is None:
                div = _divergence_exact(velocity, x)
            else:
                div = _divergence_hutchinson(velocity, x, self.probes)
        return torch.cat([velocity.detach().reshape(batch, -1).neg(), div.detach()], dim=1)


@attrs.frozen
class LogLikelihood:
    """What :func:`log_likelihood` returns.

    ``log_prob (B,)``: ``log p(x)`` per point (for Hutchinson, the mean over its probes);
    ``per_probe (B, m)``: each probe's estimate (``m = 1`` for the exact divergence); ``prior (B,)``:
    ``log p_init(x_lo)``; ``divergence (B, m)``: ``int div u dt``; ``noise (B, *D)``: the point the
    flow reaches at ``t_lo``; ``nfe``: drift evaluations (each one forward pass and ``D`` or ``m``
    vector-Jacobian products).
    """

    log_prob: Tensor
    per_probe: Tensor
    prior: Tensor
    divergence: Tensor
    noise: Tensor
    nfe: int


def draw_probes(
    shape: tuple[int, ...], noise: Noise, generator: torch.Generator | None, device: Any, dtype: torch.dtype
) -> Tensor:
    """Hutchinson probes of ``shape = (B, m, D)``: Rademacher (``±1``) or standard Gaussian."""
    if noise == "gaussian":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    return bits.to(dtype).mul_(2).sub_(1)


def log_likelihood(
    dynamics: ODE,
    simulator: Simulator,
    prior_log_prob: Callable[[Tensor], Tensor],
    x: Tensor,
    ts: Tensor,
    estimator: Estimator = "exact",
    probes: int = 1,
    noise: Noise = "rademacher",
    generator: torch.Generator | None = None,
) -> LogLikelihood:
    """``log p(x)`` of the ODE ``dynamics`` at the data points ``x (B, *D)``.

    ``ts (T + 1,)`` is an increasing grid from ``t_lo`` (the prior) to ``t_hi`` (the data); a
    fixed-step simulator steps over it mirrored (``t_lo + t_hi - ts``, reversed), an adaptive one
    is given its end points. ``prior_log_prob(x0 (B, *D)) -> (B,)`` is ``log p_init``. Hutchinson's
    ``probes`` per point are drawn from ``generator`` on ``x``'s device.
    """
    if isinstance(dynamics, SDE):
        name = dynamics.display_name
        raise CapabilityError(
            f"dynamics '{name}' is an SDE, which has no change-of-variables likelihood; compute the "
            f'likelihood of its probability-flow ODE (dynamics = "flow")'
        )
    batch, shape = x.shape[0], tuple(x.shape[1:])
    ts = ts.detach().to(device=x.device, dtype=x.dtype)
    t_lo, t_hi = float(ts[0]), float(ts[-1])
    reversed_ts = (t_lo + t_hi) - ts.flip(0)
    if simulator.adaptive:
        reversed_ts = reversed_ts[[0, -1]]
    eps = None
    if estimator == "hutchinson":
        dim = math.prod(shape)
        eps = draw_probes((batch, probes, dim), noise, generator, x.device, x.dtype)
    augmented = ChangeOfVariables(dynamics, shape, t_lo, t_hi, eps)
    count = 1 if eps is None else probes
    start = torch.cat([x.detach().reshape(batch, -1), x.new_zeros(batch, count)], dim=1)
    with torch.no_grad():
        end = simulator.simulate(augmented, start, reversed_ts)
    dim = augmented.dim
    noise_end = end[:, :dim].reshape(batch, *shape)
    divergence = end[:, dim:]
    prior = prior_log_prob(noise_end)
    per_probe = prior[:, None] - divergence
    return LogLikelihood(
        per_probe.mean(dim=1), per_probe, prior, divergence, noise_end, int(simulator.last_nfe)
    )


# ---------------------------------------------------------------------------------------------------
# A pipeline's likelihood: [evaluate] likelihood and `flowkit likelihood`
# ---------------------------------------------------------------------------------------------------


@attrs.frozen
class LikelihoodReport:
    """The likelihood of a set of points under a pipeline's model.

    ``log_prob (N,)`` per point (float64, CPU; of the dequantised points where ``dequantize`` is set);
    ``metrics`` what ``metrics.json`` and ``flowkit likelihood --json`` report: ``nll`` (nats per
    sample), ``bits_per_dim``, ``nfe``, ``n``, ``seconds``, ``estimator``, and ``nll_std_error`` for
    Hutchinson, ``exact_nll`` and ``nll_gap`` where the dataset has a known density.
    """

    log_prob: Tensor
    metrics: dict[str, Any]


def check_settings(settings: LikelihoodSection, path: Any, shape: tuple[int, ...]) -> None:
    """Refuse, before any work, settings that cannot give a likelihood: SDE dynamics, a simulator that
    cannot integrate the ODE, a path without a prior log-density. Raises :class:`CapabilityError`."""
    dynamics = settings.dynamics
    if isinstance(dynamics, SDE):
        name = dynamics.display_name
        raise CapabilityError(
            f"dynamics '{name}' is an SDE, which has no change-of-variables likelihood; use the "
            f'probability-flow ODE, dynamics = "flow"'
        )
    check_pair(settings.simulator, dynamics)
    path.prior_log_prob(torch.zeros((1, *shape)))  # raises for a path that has none


def heldout_data(pipeline: Pipeline, n: int) -> Tensor:
    """``n`` held-out points ``(n, *D)`` of the pipeline's dataset, float32 on the CPU, from the
    ``likelihood`` stage seed: the same points for ``[evaluate] likelihood`` and ``flowkit likelihood``."""
    from flowkit.engine.seeds import stage_seed

    generator = torch.Generator().manual_seed(stage_seed(pipeline.run.seed, "likelihood"))
    return pipeline.dataset.sample(n, generator=generator).float().cpu()


def dequantize(
    x: Tensor, settings: DequantizeSection, generator: torch.Generator | None, source: str = "data"
) -> Tensor:
    """Uniform dequantisation of ``x (N, *D)`` on ``bins`` levels from ``low`` to ``high``: each value
    moves to ``low + (k + u) w`` (``k`` its level, ``u ~ U[0, 1)``, ``w = (high - low) / bins``).

    Raises :class:`FlowkitError` naming ``source`` when a value is not on one of the levels.
    """
    bins, low, high = settings.bins, settings.low, settings.high
    position = (x.double() - low) / (high - low) * (bins - 1)
    level = position.round()
    off = ((position - level).abs() > 1e-3) | (level < 0) | (level > bins - 1)
    if bool(off.any()):
        count = int(off.flatten(1).any(dim=1).sum())
        raise FlowkitError(
            f"{source}: {count} of {len(x)} points have values that are not on the {bins} levels from "
            f"{low} to {high} of [evaluate] likelihood.dequantize (e.g. {float(x[off][0]):.6g}); set bins, "
            f"low and high to the data's levels, or remove dequantize for continuous data"
        )
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    width = (high - low) / bins
    return (low + (level + u) * width).to(x.dtype)


def evaluate_likelihood(
    pipeline: Pipeline, settings: LikelihoodSection, data: Tensor | None = None, source: str = "data"
) -> LikelihoodReport:
    """The log-likelihood of ``data (N, *D)`` (default: ``settings.n`` held-out points) under the
    pipeline's model, in batches of ``settings.batch_size``; every random draw (dequantisation,
    probes) from the run's ``likelihood`` stage seed."""
    from flowkit.engine.seeds import stage_seed

    check_settings(settings, pipeline.path, tuple(pipeline.dataset.shape))
    points = heldout_data(pipeline, settings.n) if data is None else data
    backend = pipeline.device
    device = backend.device
    generator = backend.generator(stage_seed(pipeline.run.seed, "likelihood-noise"))
    if settings.dequantize is not None:
        points = dequantize(points.to(device), settings.dequantize, generator, source)
    t_lo, t_hi = pipeline.path.t_range
    ts = settings.grid(settings.steps, t_lo, t_hi)
    started = time.perf_counter()
    parts, probes, nfe = [], [], 0
    for batch in points.split(settings.batch_size):
        result = log_likelihood(
            settings.dynamics,
            settings.simulator,
            pipeline.path.prior_log_prob,
            batch.to(device),
            ts,
            settings.estimator,
            settings.probes,
            settings.noise,
            generator,
        )
        parts.append(result.log_prob.double().cpu())
        probes.append(result.per_probe.double().cpu())
        nfe = max(nfe, result.nfe)
    backend.synchronize()
    seconds = time.perf_counter() - started
    log_prob = torch.cat(parts)
    if not bool(torch.isfinite(log_prob).all()):
        bad = int((~torch.isfinite(log_prob)).sum())
        raise FlowkitError(
            f"{source}: the log-likelihood of {bad} of {len(log_prob)} points is not finite; check "
            f"the model (its velocity diverges there?) or use more steps / a tighter tolerance"
        )
    metrics = summarize(log_prob, torch.cat(probes), tuple(points.shape[1:]), settings)
    metrics.update({"nfe": nfe, "seconds": round(seconds, 3)})
    dataset = pipeline.dataset
    if settings.dequantize is None and dataset.provides_log_prob:
        exact = -float(dataset.log_prob(points.double()).double().mean())
        metrics.update({"exact_nll": exact, "nll_gap": metrics["nll"] - exact})
    return LikelihoodReport(log_prob, metrics)


def summarize(
    log_prob: Tensor, per_probe: Tensor, shape: tuple[int, ...], settings: LikelihoodSection
) -> dict[str, Any]:
    """``nll`` (nats per sample), ``bits_per_dim``, ``n``, ``estimator`` and, for Hutchinson,
    ``nll_std_error`` from per-point ``log_prob (N,)`` and ``per_probe (N, m)`` estimates.

    Hutchinson's standard error is that of the probes' randomness: from the spread between each point's
    probes when ``m >= 2``; with one probe, the spread across points (which also holds the data's
    spread, so it is an upper bound).
    """
    n, dim = len(log_prob), math.prod(shape)
    nll = -float(log_prob.mean())
    bits_offset = 0.0
    if settings.dequantize is not None:
        q = settings.dequantize
        bits_offset = -dim * math.log((q.high - q.low) / q.bins)  # -D log(bin width)
    out: dict[str, Any] = {
        "nll": nll,
        "bits_per_dim": (nll + bits_offset) / (dim * math.log(2.0)),
        "n": n,
        "estimator": settings.estimator,
    }
    if settings.estimator == "hutchinson":
        m = per_probe.shape[1]
        if m >= 2:
            within = per_probe.var(dim=1)  # (N,): the variance of one probe's estimate
            out["nll_std_error"] = float((within / m).sum().sqrt() / n)
        else:
            out["nll_std_error"] = float(log_prob.std() / math.sqrt(n)) if n > 1 else float("nan")
        out["probes"] = m
    return out


def likelihood_metrics(pipeline: Pipeline) -> dict[str, Any]:
    """What ``[evaluate] likelihood`` adds to ``metrics.json``: ``nll``, ``bits_per_dim``, and the
    others of :class:`LikelihoodReport` prefixed ``likelihood_`` (``likelihood_nfe``, ...)."""
    settings = pipeline.evaluate.likelihood
    assert settings is not None
    metrics = evaluate_likelihood(pipeline, settings, source=pipeline.source).metrics
    keep = {"nll", "bits_per_dim", "nll_std_error", "exact_nll", "nll_gap"}
    return {key if key in keep else f"likelihood_{key}": value for key, value in metrics.items()}


def run_settings(
    pipeline: Pipeline, registry: Any, overrides: Sequence[str], source: str
) -> LikelihoodSection:
    """The likelihood settings of a finished run: its ``[evaluate] likelihood`` table (defaults when it
    has none) with ``KEY=VALUE`` overrides of that table's keys (``estimator=hutchinson``,
    ``simulator.kind=dopri5``; ``evaluate.likelihood.`` in front is accepted). Errors name ``source``."""
    from flowkit.config import Location, Structurer, apply_overrides, unstructure
    from flowkit.engine.sections import LikelihoodSection

    current = pipeline.evaluate.likelihood
    table: dict[str, Any] = unstructure(current) if current is not None else {}
    # Overrides are applied to the whole file's shape, so their errors and "(from --set)" read as
    # those of `flowkit run --set evaluate.likelihood.KEY=VALUE`.
    full = [
        text
        if text.startswith(("evaluate.likelihood.", "evaluate.likelihood="))
        else f"evaluate.likelihood.{text}"
        for text in overrides
    ]
    raw, overridden = apply_overrides({"evaluate": {"likelihood": table}}, full, source)
    top = Location(source, ("evaluate", "likelihood"), overridden)
    return Structurer(registry, pipeline.context).structure(
        LikelihoodSection, raw["evaluate"]["likelihood"], top
    )


def load_points(file: str, shape: tuple[int, ...]) -> Tensor:
    """Points ``(N, *D)`` from a ``.npy`` file, float32; a clear :class:`FlowkitError` naming the file
    when it cannot be read or is not a finite floating-point array of shape ``(N, *shape)``."""
    import numpy as np

    try:
        array = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise FlowkitError(f"--data {file}: no such file") from None
    except (OSError, ValueError) as exc:
        raise FlowkitError(f"--data {file}: not a .npy array file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise FlowkitError(f"--data {file}: expected one .npy array, found an archive of several")
    expected = "(N, " + ", ".join(map(str, shape)) + ")"
    if not np.issubdtype(array.dtype, np.floating):
        raise FlowkitError(
            f"--data {file}: expected floating-point values, found dtype {array.dtype}; convert the data "
            f"to float (images scaled to the levels of [evaluate] likelihood.dequantize)"
        )
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != tuple(shape) or len(array) == 0:
        raise FlowkitError(
            f"--data {file}: expected an array of shape {expected} (the run's data shape), found "
            f"{tuple(array.shape)}"
        )
    finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise FlowkitError(
            f"--data {file}: {len(rows)} rows hold non-finite values (NaN or inf), the first is row "
            f"{int(rows[0])}; remove them"
        )
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
