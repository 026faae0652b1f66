"""Data on the manifolds: a von Mises–Fisher mixture on ``S^2`` and a checkerboard on the flat torus.

Both sample exactly on the device from the given generator and have exact densities with respect to
the Riemannian volume (the surface measure; the area on the torus), so a likelihood evaluation reports
the gap to the truth.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from flowkit.interfaces import Dataset
from flowkit.params import param
from flowkit_manifolds.geometry import TWO_PI


def fibonacci_directions(count: int) -> Tensor:
    """``count`` unit vectors ``(count, 3)`` spread evenly over ``S^2`` (the Fibonacci lattice), float64."""
    k = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * k / count
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * k
    r = torch.sqrt(1.0 - z * z)
    return torch.stack([r * torch.cos(azimuth), r * torch.sin(azimuth), z], dim=1)


def vmf_log_normalizer(kappa: float) -> float:
    """``log C(kappa)`` of the vMF density ``C exp(kappa mu.x)`` on ``S^2``: ``kappa / (4 pi sinh kappa)``,
    written as ``log kappa - log 2 pi - kappa - log1p(-exp(-2 kappa))`` so large ``kappa`` stays finite."""
    return math.log(kappa) - math.log(2.0 * math.pi) - kappa - math.log1p(-math.exp(-2.0 * kappa))


def sample_vmf(mean: Tensor, kappa: float, generator: torch.Generator | None) -> Tensor:
    """One exact draw per row of unit ``mean (n, 3)`` float64 from the vMF of concentration ``kappa``;
    ``(n, 3)`` float64 on ``mean``'s device.

    Wood's (1994) construction: ``w = mu.x`` from its marginal, then ``x = w mu + sqrt(1 - w^2) v`` with
    ``v`` uniform on the unit circle orthogonal to ``mu``. On ``S^2`` the marginal ``p(w) ~ exp(kappa w)``
    on ``[-1, 1]`` inverts in closed form, ``w = 1 + log(u + (1 - u) exp(-2 kappa)) / kappa``, so
    Wood's rejection step is not needed.
    """
    n, device = mean.shape[0], mean.device
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    w = (1.0 + torch.log(u + (1.0 - u) * math.exp(-2.0 * kappa)) / kappa).clamp(-1.0, 1.0)
    gaussian = torch.randn((n, 3), generator=generator, device=device, dtype=torch.float64)
    across = gaussian - (gaussian * mean).sum(dim=1, keepdim=True) * mean  # orthogonal to mu
    across = across / across.norm(dim=1, keepdim=True)  # uniform on that circle
    return w[:, None] * mean + torch.sqrt(1.0 - w * w)[:, None] * across


class VMFMixture(Dataset):
    """An equal-weight mixture of ``components`` von Mises–Fisher distributions on ``S^2``, of
    concentration ``kappa``, centred on the Fibonacci lattice of ``components`` directions.

    ``p(x) = (1/K) sum_k C(kappa) exp(kappa mu_k.x)``, ``C(kappa) = kappa / (4 pi sinh kappa)``, with
    respect to the area on the sphere; points are unit vectors of ``R^3``.
    """

    @attrs.define(frozen=True)
    class Params:
        components: int = param(
            4,
            doc="Number of vMF components (means on the Fibonacci lattice).",
            validator=attrs.validators.ge(1),
        )
        kappa: float = param(
            20.0,
            doc="Concentration of each component (larger: tighter).",
            validator=[attrs.validators.gt(0), attrs.validators.le(1e4)],
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return (3,)

    def means(self) -> Tensor:
        """The ``(K, 3)`` unit means, float64 on the CPU."""
        return fibonacci_directions(self.params.components)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` points ``(n, 3)``: a component drawn uniformly, then its vMF draw (Wood)."""
        means = self.means().to(device)
        component = torch.randint(0, self.params.components, (n,), generator=generator, device=device)
        x = sample_vmf(means[component], self.params.kappa, generator)
        return (x / x.norm(dim=1, keepdim=True)).float()

    @property
    def provides_log_prob(self) -> bool:
        return True

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` for ``x (B, 3)`` on the sphere, shape ``(B,)``."""
        means = self.means().to(device=x.device, dtype=x.dtype)
        log_c = vmf_log_normalizer(self.params.kappa)
        exponents = self.params.kappa * (x @ means.T) + log_c  # (B, K)
        return torch.logsumexp(exponents, dim=1) - math.log(self.params.components)


class TorusCheckerboard(Dataset):
    """Uniform on the dark cells of a ``cells x cells`` checkerboard on the flat torus ``[0, 2 pi)^2``.

    A cell ``(i, j)`` is dark when ``i + j`` is even (with an even ``cells`` the pattern is periodic),
    so ``p(x) = 2 / (2 pi)^2`` on the dark cells and 0 elsewhere.
    """

    @attrs.define(frozen=True)
    class Params:
        cells: int = param(
            4,
            doc="Cells along each circle (even, so the pattern wraps around without a seam).",
            validator=[attrs.validators.ge(2), attrs.validators.le(64)],
        )

        def __attrs_post_init__(self) -> None:
            if self.cells % 2:
                raise ValueError(f"cells must be even so the board wraps without a seam; got {self.cells}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (2,)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` points ``(n, 2)`` of angles: a dark cell drawn uniformly, then a uniform point in it."""
        cells = self.params.cells
        row = torch.randint(0, cells, (n,), generator=generator, device=device)
        half = torch.randint(0, cells // 2, (n,), generator=generator, device=device)
        column = 2 * half + row % 2  # the dark cells of row i are the columns of i's parity
        offset = torch.rand((n, 2), generator=generator, device=device)
        width = TWO_PI / cells
        return (torch.stack([row, column], dim=1).float() + offset) * width

    @property
    def provides_log_prob(self) -> bool:
        return True

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` for ``x (B, 2)``: ``log(2 / (2 pi)^2)`` on dark cells, ``-inf`` elsewhere."""
        cells = self.params.cells
        index = torch.floor(torch.remainder(x, TWO_PI) / (TWO_PI / cells)).long().clamp(0, cells - 1)
        dark = (index.sum(dim=1) % 2) == 0
        inside = math.log(2.0) - 2.0 * math.log(TWO_PI)
        return torch.where(dark, x.new_full(dark.shape, inside), x.new_full(dark.shape, -math.inf))
