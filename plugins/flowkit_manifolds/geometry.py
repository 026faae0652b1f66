"""The two manifolds: the sphere ``S^d`` embedded in ``R^(d+1)`` and the flat torus ``[0, 2 pi)^d``.

Each gives the maps a geodesic flow needs (``docs/math.md``, "Riemannian flow matching"): ``project``
(onto the manifold), ``to_tangent`` (onto the tangent space at a point), ``exp`` and ``log``,
``dist`` (the geodesic distance), ``from_gaussian`` (a standard Gaussian draw mapped to a draw of
the uniform distribution, so that a path's ``noise`` stays the Gaussian every loss draws) and
``log_volume`` (the uniform density is ``-log_volume``). Points are ``(B, n)`` rows; plain torch, no
component: the path, the network, the simulators and the metric share one instance per manifold.
"""

from __future__ import annotations

import abc
import math

import numpy as np
import torch
from torch import Tensor

TWO_PI = 2.0 * math.pi


def sinc(a: Tensor) -> Tensor:
    """``sin(a) / a``, equal to 1 at ``a = 0`` and regular (Taylor series) near it."""
    small = a.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(a), a)
    return torch.where(small, 1.0 - a * a / 6.0, torch.sin(safe) / safe)


class Manifold(abc.ABC):
    """A Riemannian manifold embedded in (or charted on) ``R^n``; points and vectors are ``(B, n)``."""

    name: str

    @abc.abstractmethod
    def project(self, x: Tensor) -> Tensor:
        """The point of the manifold nearest ``x`` (the sphere) or equal to it (the torus's wrap)."""

    @abc.abstractmethod
    def to_tangent(self, x: Tensor, u: Tensor) -> Tensor:
        """``u`` projected onto the tangent space at ``x``."""

    @abc.abstractmethod
    def exp(self, x: Tensor, u: Tensor) -> Tensor:
        """The end of the geodesic from ``x`` with initial velocity ``u`` after unit time."""

    @abc.abstractmethod
    def log(self, x: Tensor, y: Tensor) -> Tensor:
        """The tangent vector at ``x`` whose exponential is ``y`` (the shortest geodesic)."""

    @abc.abstractmethod
    def geodesic_velocity(self, x0: Tensor, u: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(exp_x0(t u), d/dt exp_x0(t u))`` for ``t`` broadcast as ``(B, 1)``."""

    @abc.abstractmethod
    def from_gaussian(self, eps: Tensor) -> Tensor:
        """A standard Gaussian ``eps (B, n)`` mapped to an exact draw of the uniform distribution."""

    @abc.abstractmethod
    def log_volume(self, n: int) -> float:
        """``log`` of the manifold's volume, for points of ``n`` coordinates."""

    @abc.abstractmethod
    def distance_matrix(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Geodesic distances ``(N, M)`` between rows of ``x (N, n)`` and ``y (M, n)``, float64."""

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        """The geodesic distance ``(B,)`` between rows of ``x`` and ``y``."""
        return self.log(x, y).norm(dim=-1)

    def on_manifold_error(self, x: Tensor) -> Tensor:
        """``(B,)``: how far each point is from the manifold (0 on it)."""
        return (self.project(x) - x).abs().amax(dim=-1)


class Sphere(Manifold):
    """The unit sphere ``S^d = {x in R^(d+1): |x| = 1}``.

    ``to_tangent`` projects with ``x / |x|``, not ``x``: off the sphere it is the tangent space of the
    sphere through ``x`` (radius ``|x|``), so the ambient divergence of a projected field is the
    Riemannian divergence on that sphere (``docs/math.md``) and the field never moves ``|x|``.
    """

    name = "sphere"

    def project(self, x: Tensor) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def to_tangent(self, x: Tensor, u: Tensor) -> Tensor:
        radial = (x * u).sum(dim=-1, keepdim=True) / (x * x).sum(dim=-1, keepdim=True)
        return u - radial * x

    def exp(self, x: Tensor, u: Tensor) -> Tensor:
        theta = u.norm(dim=-1, keepdim=True)
        return torch.cos(theta) * x + sinc(theta) * u

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        # |P_x y| = sin(theta) and <x, y> = cos(theta): atan2 keeps theta accurate near 0 and pi,
        # where acos of the inner product loses half its digits.
        u = self.to_tangent(x, y - x)
        sine = u.norm(dim=-1, keepdim=True)
        theta = torch.atan2(sine, (x * y).sum(dim=-1, keepdim=True))
        # At the antipode (theta = pi) every direction is a geodesic: u = 0 there gives 0, not NaN.
        return u / sinc(theta).clamp_min(1e-30)

    def geodesic_velocity(self, x0: Tensor, u: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # x_t = cos(t theta) x0 + t sinc(t theta) u, theta = |u|; its derivative has no division.
        theta = u.norm(dim=-1, keepdim=True)
        angle = t * theta
        x_t = torch.cos(angle) * x0 + t * sinc(angle) * u
        velocity = torch.cos(angle) * u - theta * torch.sin(angle) * x0
        return x_t, velocity

    def from_gaussian(self, eps: Tensor) -> Tensor:
        # A standard Gaussian is rotation invariant: its direction is uniform on the sphere.
        return self.project(eps)

    def log_volume(self, n: int) -> float:
        # |S^(n-1)| = 2 pi^(n/2) / Gamma(n/2)
        return math.log(2.0) + 0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n)

    def distance_matrix(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
        from scipy.spatial.distance import cdist  # scipy only where a metric is computed

        # The chord |x - y| = 2 sin(theta / 2) keeps small angles exact, where acos(x.y) would not.
        chord = cdist(x, y, "euclidean")
        result: np.ndarray = 2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0))
        return result


class FlatTorus(Manifold):
    """The flat torus ``[0, 2 pi)^d``: angles, identified modulo ``2 pi``, with the Euclidean metric."""

    name = "torus"

    def project(self, x: Tensor) -> Tensor:
        return torch.remainder(x, TWO_PI)

    def to_tangent(self, x: Tensor, u: Tensor) -> Tensor:
        return u

    def exp(self, x: Tensor, u: Tensor) -> Tensor:
        return self.project(x + u)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        # The representative of y - x in [-pi, pi): the shortest way round each circle.
        return torch.remainder(y - x + math.pi, TWO_PI) - math.pi

    def geodesic_velocity(self, x0: Tensor, u: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.project(x0 + t * u), u.expand_as(x0)

    def from_gaussian(self, eps: Tensor) -> Tensor:
        # 2 pi Phi(eps) is uniform on [0, 2 pi); the wrap maps a rounded 2 pi back to 0.
        return self.project(math.pi * (1.0 + torch.erf(eps / math.sqrt(2.0))))

    def log_volume(self, n: int) -> float:
        return n * math.log(TWO_PI)

    def distance_matrix(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        diff = np.abs(x[:, None, :] - y[None, :, :]) % TWO_PI
        wrapped = np.minimum(diff, TWO_PI - diff)
        result: np.ndarray = np.sqrt((wrapped**2).sum(axis=-1))
        return result


MANIFOLDS: dict[str, Manifold] = {"sphere": Sphere(), "torus": FlatTorus()}
