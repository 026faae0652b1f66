"""Gaussian-mixture data and its exact oracle for every Gaussian path.

The dataset (``kind = "gaussian-mixture"``) lives here, with the oracle, rather than in
``flowkit_data``: the oracle needs the mixture's exact parameters, and keeping both in one package
keeps that contract (:meth:`GaussianMixture.mixture_parameters`) in one place.

For ``p_data = sum_k w_k N(m_k, S_k)`` and a Gaussian path ``p_t(x|z) = N(alpha_t z, beta_t^2 I)``
(``docs/math.md``, "A ground truth to test against"):

* ``p_t(x) = sum_k w_k N(x; alpha_t m_k, A_k)`` with ``A_k = alpha_t^2 S_k + beta_t^2 I``;
* the score is ``sum_k q_k(x) s_k(x)`` with ``s_k = -A_k^{-1} (x - alpha_t m_k)`` and posterior weights
  ``q_k = softmax_k(log w_k + log N(x; alpha_t m_k, A_k))`` (log-sum-exp, never underflows);
* ``E[z|x] = sum_k q_k (m_k + alpha_t S_k A_k^{-1} (x - alpha_t m_k))`` and the marginal velocity is
  ``u = alpha'_t E[z|x] + beta'_t / beta_t (x - alpha_t E[z|x]) = alpha'_t E[z|x] - beta'_t beta_t s``
  (since ``x - alpha_t E_k[z|x] = beta_t^2 A_k^{-1} (x - alpha_t m_k)``). This form is regular at
  ``alpha_t = 0`` and, for positive definite ``S_k``, at ``beta_t = 0``.

Each covariance is diagonalized once, ``S_k = U_k diag(lambda_k) U_k^T``, so ``A_k`` is diagonal in
the same basis for every ``t``: a call costs ``O(B K d^2)`` with no per-sample matrix solve.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import attrs
import numpy as np
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import (
    AnalyticModel,
    BuildContext,
    Dataset,
    GaussianProbabilityPath,
    Schedule,
    ScoreModel,
    VectorField,
)
from flowkit.params import param
from flowkit_gaussian.errors import InvalidParameter

#: The mixtures a user gets without listing means (all 2D).
PRESETS: dict[str, dict[str, Any]] = {
    # Unequal weights and correlated, anisotropic components: a sharp test of an oracle or a model.
    "asymmetric": {
        "weights": [0.5, 0.3, 0.2],
        "means": [[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]],
        "covariances": [
            [[0.30, 0.20], [0.20, 0.40]],
            [[0.50, -0.30], [-0.30, 0.40]],
            [[0.20, 0.00], [0.00, 0.60]],
        ],
    },
    # Eight equal isotropic components on a circle of radius 3.
    "ring": {
        "weights": [1.0] * 8,
        "means": [
            [3.0 * math.cos(2 * math.pi * k / 8), 3.0 * math.sin(2 * math.pi * k / 8)] for k in range(8)
        ],
        "covariances": [[[0.09, 0.0], [0.0, 0.09]] for _ in range(8)],
    },
}


def _finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        raise InvalidParameter(f"{name}: every value must be finite, got {array.tolist()}")


def resolve_mixture(params: GaussianMixture.Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(weights (K,), means (K, d), covariances (K, d, d))``, float64, weights summing to 1.

    Raises :class:`InvalidParameter` naming the offending parameter.
    """
    if not params.means:
        for name in ("weights", "stds", "covariances"):
            if getattr(params, name):
                raise InvalidParameter(
                    f"{name}: given without means; the preset '{params.preset}' fixes its own "
                    f"{name} (set means = [[...], ...] to define a custom mixture)"
                )
        preset = PRESETS[params.preset]
        return resolve_mixture(
            GaussianMixture.Params(
                means=preset["means"], weights=preset["weights"], covariances=preset["covariances"]
            )
        )

    lengths = {len(m) for m in params.means}
    if len(lengths) != 1 or 0 in lengths:
        raise InvalidParameter(
            f"means: every mean must have the same number (>= 1) of coordinates, got lengths "
            f"{[len(m) for m in params.means]}"
        )
    means = np.asarray(params.means, dtype=np.float64)
    _finite("means", means)
    k, d = means.shape

    if params.weights:
        weights = np.asarray(params.weights, dtype=np.float64)
        if weights.shape != (k,):
            raise InvalidParameter(f"weights: expected {k} values (one per mean), got {len(params.weights)}")
        _finite("weights", weights)
        if np.any(weights < 0) or weights.sum() <= 0:
            raise InvalidParameter(f"weights: must be >= 0 with a positive sum, got {params.weights}")
    else:
        weights = np.ones(k)
    weights = weights / weights.sum()

    if params.stds and params.covariances:
        raise InvalidParameter(
            "stds, covariances: give one of them (isotropic stds or full covariances), not both"
        )
    if params.covariances:
        if len(params.covariances) != k or any(
            len(c) != d or any(len(row) != d for row in c) for c in params.covariances
        ):
            raise InvalidParameter(
                f"covariances: expected {k} matrices (one per mean) of size {d} x {d}, got "
                f"{[[len(row) for row in c] for c in params.covariances]} (row lengths per matrix)"
            )
        covs = np.asarray(params.covariances, dtype=np.float64)
        _finite("covariances", covs)
        for i, c in enumerate(covs):
            scale = max(np.abs(c).max(), 1e-300)
            if not np.allclose(c, c.T, rtol=0.0, atol=1e-9 * scale):
                raise InvalidParameter(f"covariances[{i}]: must be symmetric, got {c.tolist()}")
            smallest = np.linalg.eigvalsh(c).min()
            if smallest < -1e-9 * scale:
                raise InvalidParameter(
                    f"covariances[{i}]: must be positive semi-definite, but its smallest eigenvalue "
                    f"is {smallest:.4g} (matrix {c.tolist()})"
                )
    else:
        stds = np.asarray(params.stds or [1.0], dtype=np.float64)
        if stds.shape not in ((1,), (k,)):
            raise InvalidParameter(f"stds: expected 1 or {k} values (one per mean), got {len(params.stds)}")
        _finite("stds", stds)
        if np.any(stds < 0):
            raise InvalidParameter(f"stds: must be >= 0, got {params.stds}")
        covs = np.broadcast_to(stds, (k,))[:, None, None] ** 2 * np.eye(d)[None]
    return weights, means, np.array(covs)


def _eigh(covariances: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues ``(K, d)`` (clamped at 0) and eigenvectors ``(K, d, d)`` of PSD covariances."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariances)
    return eigenvalues.clamp_min(0.0), eigenvectors


class GaussianMixture(Dataset):
    """``p_data = sum_k w_k N(m_k, S_k)`` in ``d`` dimensions; samples have shape ``(n, d)``.

    In TOML::

        [data]
        kind = "gaussian-mixture"              # the "asymmetric" 2D preset
        # or a custom mixture:
        means = [[-1.0, 0.0], [1.0, 0.0]]
        weights = [0.3, 0.7]                   # optional, default equal
        stds = [0.2, 0.5]                      # or covariances = [[[0.04, 0.0], [0.0, 0.04]], ...]
    """

    @attrs.define(frozen=True)
    class Params:
        preset: Literal["asymmetric", "ring"] = param(
            "asymmetric",
            doc="Mixture used when means is empty: 'asymmetric' (3 correlated components) or 'ring' (8).",
            validator=attrs.validators.in_(sorted(PRESETS)),
        )
        means: list[list[float]] = param(
            factory=list, doc="Component means, K lists of d numbers; empty uses the preset."
        )
        weights: list[float] = param(
            factory=list, doc="Component weights (K values, normalized); empty means equal weights."
        )
        stds: list[float] = param(
            factory=list, doc="Isotropic std per component (K values or one for all); default 1."
        )
        covariances: list[list[list[float]]] = param(
            factory=list, doc="Full covariance per component (K symmetric PSD d x d matrices)."
        )

        def __attrs_post_init__(self) -> None:
            resolve_mixture(self)  # fail when the parameters are read, naming the parameter

    def __init__(self, params: GaussianMixture.Params | None = None) -> None:
        super().__init__(params)
        weights, means, covs = resolve_mixture(self.params)
        self._weights = torch.as_tensor(weights)
        self._means = torch.as_tensor(means)
        self._covariances = torch.as_tensor(covs)
        eigenvalues, eigenvectors = _eigh(self._covariances)
        # S = L L^T with L = U diag(sqrt(lambda)): valid for singular (PSD) covariances too.
        self._factors = eigenvectors * eigenvalues.sqrt()[:, None, :]
        self._on_device: dict[Any, tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._means.shape[1]),)

    @property
    def num_components(self) -> int:
        """Number of components ``K``."""
        return int(self._weights.shape[0])

    def mixture_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(weights (K,), means (K, d), covariances (K, d, d))``: float64 CPU copies, weights sum to 1."""
        return self._weights.clone(), self._means.clone(), self._covariances.clone()

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` draws, shape ``(n, d)``, float32, on ``device`` (the generator's device must match)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device not in self._on_device:
            self._on_device[device] = tuple(
                p.to(device=device, dtype=torch.float32) for p in (self._weights, self._means, self._factors)
            )  # type: ignore[assignment]
        weights, means, factors = self._on_device[device]
        component = torch.multinomial(weights, n, replacement=True, generator=generator)
        eps = torch.randn((n, self.shape[0]), generator=generator, device=device, dtype=factors.dtype)
        return means[component] + torch.einsum("nij,nj->ni", factors[component], eps)

    @property
    def provides_log_prob(self) -> bool:
        """``True`` when every covariance is positive definite (a singular one has no density)."""
        return bool((_eigh(self._covariances)[0] > 0).all())

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p_data(x)`` for ``x (B, d)``, shape ``(B,)`` (needs positive definite covariances)."""
        eigenvalues, _ = _eigh(self._covariances)
        if bool((eigenvalues <= 0).any()):
            raise FlowkitError(
                "log_prob needs positive definite covariances; this mixture has a singular one"
            )
        components = torch.distributions.MultivariateNormal(
            self._means.to(x.device), covariance_matrix=self._covariances.to(x.device)
        )
        log_joint = components.log_prob(x.to(torch.float64)[:, None, :]) + self._weights.to(x.device).log()
        return torch.logsumexp(log_joint, dim=1).to(x.dtype)


class MixtureOracle(AnalyticModel):
    """The exact marginal score and velocity of a Gaussian path started from a Gaussian mixture.

    ``roles()`` gives ``{"velocity": VectorField, "score": ScoreModel}``; each is ``forward(x (B, d),
    t (B,)) -> (B, d)``. Computation runs in float64 and returns ``x``'s dtype; the buffers follow
    ``.to(device)``. Build it in a pipeline with ``[model] kind = "mixture-oracle"`` (with
    ``[data] kind = "gaussian-mixture"`` and ``[path] kind = "gaussian"``) or in Python with
    :meth:`from_components` or the constructor.
    """

    # Buffers (float64), registered in __init__ so they follow .to(device).
    log_weights: Tensor  # (K,)
    means: Tensor  # (K, d)
    eigenvalues: Tensor  # (K, d)
    bases: Tensor  # (d, K d)
    rotated_means: Tensor  # (K, d)

    def __init__(
        self, weights: Tensor, means: Tensor, covariances: Tensor, schedule: Schedule, params: Any = None
    ) -> None:
        super().__init__(params)
        self.schedule = schedule
        covariances = torch.as_tensor(covariances, dtype=torch.float64)
        eigenvalues, eigenvectors = _eigh(covariances)
        means = torch.as_tensor(means, dtype=torch.float64)
        k, d = means.shape
        self.register_buffer("log_weights", torch.as_tensor(weights, dtype=torch.float64).log())
        self.register_buffer("means", means)
        self.register_buffer("eigenvalues", eigenvalues)  # (K, d)
        # All eigenbases side by side, (d, K d): one matrix product rotates x into every basis.
        self.register_buffer("bases", eigenvectors.permute(1, 0, 2).reshape(d, k * d).contiguous())
        self.register_buffer("rotated_means", torch.einsum("kij,ki->kj", eigenvectors, means))  # U_k^T m_k

    @classmethod
    def from_components(cls, dataset: Any, path: Any) -> MixtureOracle:
        """The oracle of ``dataset`` (with ``mixture_parameters()``) under ``path`` (a Gaussian path)."""
        if not callable(getattr(dataset, "mixture_parameters", None)):
            name = getattr(dataset, "registered_name", None) or type(dataset).__name__  # may be None
            raise CapabilityError(
                f"model 'mixture-oracle' needs data with known mixture parameters, but [data] is "
                f"'{name}'; use [data] kind = \"gaussian-mixture\""
            )
        if not isinstance(path, GaussianProbabilityPath):
            name = getattr(path, "registered_name", None) or type(path).__name__  # may be None
            raise CapabilityError(
                f"model 'mixture-oracle' needs a Gaussian path (its alpha_t and beta_t), but [path] is "
                f"'{name}'; use [path] kind = \"gaussian\""
            )
        weights, means, covariances = dataset.mixture_parameters()
        return cls(weights, means, covariances, path.schedule)

    @classmethod
    def from_params(cls, params: Any, context: BuildContext) -> MixtureOracle:
        oracle = cls.from_components(context.dataset, context.path)
        oracle.params = params
        return oracle

    # -- closed forms --------------------------------------------------------------------------------

    def _components(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Per-component quantities in each component's eigenbasis (float64)."""
        if x.dim() != 2 or x.shape[1] != self.means.shape[1]:
            raise FlowkitError(
                f"mixture oracle: x must have shape (B, {self.means.shape[1]}), got {tuple(x.shape)}"
            )
        batch, dim = x.shape
        x = x.to(torch.float64)
        t = t.reshape(-1)
        # One time for the whole batch (a simulator's `ts[i].expand(B)` has stride 0): the
        # t-dependent factors are computed once, shape (1, K, d), and broadcast.
        t = t.expand(batch) if t.numel() > 1 and t.stride(0) != 0 else t[:1]
        t = t.to(device=x.device, dtype=torch.float64)
        c = self.schedule.coefficients(t).tensors(t)
        alpha = cast(Tensor, c.alpha)[:, None, None]  # (B, 1, 1)
        beta = cast(Tensor, c.beta)[:, None, None]
        # U_k^T (x - alpha m_k) for every k: (B, K, d)
        rotated = torch.addcmul((x @ self.bases).view(batch, -1, dim), alpha, self.rotated_means, value=-1)
        variance = torch.addcmul(beta * beta, alpha * alpha, self.eigenvalues)  # eigenvalues of A_k
        whitened = rotated / variance  # U_k^T A_k^{-1} (x - alpha m_k)
        quadratic = torch.einsum("bkd,bkd->bk", rotated, whitened)
        log_normal = -0.5 * (quadratic + variance.log().sum(-1) + dim * math.log(2 * math.pi))  # (B, K)
        return {
            "t": t,
            "alpha": alpha,
            "beta": beta,
            "logits": self.log_weights + log_normal,
            "whitened": whitened,
        }

    def _back(self, coefficients: Tensor) -> Tensor:
        """``sum_k U_k c_k`` for eigenbasis coefficients ``c (B, K, d)``; shape ``(B, d)``."""
        return coefficients.reshape(coefficients.shape[0], -1) @ self.bases.T

    def log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """``log p_t(x)`` for ``x (B, d)``, ``t (B,)``; shape ``(B,)``."""
        return torch.logsumexp(self._components(x, t)["logits"], dim=1).to(x.dtype)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """``grad_x log p_t(x) = -sum_k q_k A_k^{-1} (x - alpha_t m_k)``, shape ``(B, d)``."""
        c = self._components(x, t)
        posterior = torch.softmax(c["logits"], dim=1)[:, :, None]  # (B, K, 1)
        return (-self._back(posterior * c["whitened"])).to(x.dtype)

    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[z | x_t = x] = sum_k q_k (m_k + alpha_t S_k A_k^{-1} (x - alpha_t m_k))``, shape ``(B, d)``."""
        c = self._components(x, t)
        posterior = torch.softmax(c["logits"], dim=1)
        shift = self._back(posterior[:, :, None] * c["alpha"] * self.eigenvalues * c["whitened"])
        return (posterior @ self.means + shift).to(x.dtype)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Marginal velocity ``alpha'_t E[z|x] - beta'_t beta_t grad log p_t(x)``, shape ``(B, d)``."""
        c = self._components(x, t)
        posterior = torch.softmax(c["logits"], dim=1)
        rates = self.schedule.coefficients(c["t"]).tensors(c["t"])
        d_alpha = cast(Tensor, rates.d_alpha)[:, None, None]
        d_beta = cast(Tensor, rates.d_beta)[:, None, None]
        # alpha' (alpha S_k A_k^{-1} r) + beta' beta A_k^{-1} r, per component, in its eigenbasis
        per_component = (d_alpha * c["alpha"] * self.eigenvalues + d_beta * c["beta"]) * c["whitened"]
        mean_part = d_alpha[:, :, 0] * (posterior @ self.means)
        return (mean_part + self._back(posterior[:, :, None] * per_component)).to(x.dtype)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The marginal velocity (as :meth:`velocity`)."""
        return self.velocity(x, t)

    def roles(self) -> dict[str, nn.Module]:
        return {"velocity": OracleVelocity(self), "score": OracleScore(self)}


class OracleVelocity(VectorField):
    """The oracle's marginal velocity as a :class:`VectorField`."""

    def __init__(self, oracle: MixtureOracle) -> None:
        super().__init__()
        self.oracle = oracle

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.oracle.velocity(x, t)


class OracleScore(ScoreModel):
    """The oracle's marginal score as a :class:`ScoreModel`."""

    def __init__(self, oracle: MixtureOracle) -> None:
        super().__init__()
        self.oracle = oracle

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.oracle.score(x, t)
