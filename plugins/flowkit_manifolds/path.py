"""The geodesic path on a manifold (Chen & Lipman 2023): ``x_t = exp_x0(t log_x0(z))``.

``x_0`` is uniform on the manifold (the sphere) or wrapped-uniform (the torus); the conditional target
is the geodesic's velocity ``d/dt exp_x0(t log_x0(z))``, which for the sphere is
``cos(t theta) u - theta sin(t theta) x_0`` with ``u = log_x0(z)``, ``theta = |u|`` (``docs/math.md``,
"Riemannian flow matching").
"""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import BuildContext, ProbabilityPath
from flowkit.params import param
from flowkit_manifolds.geometry import MANIFOLDS, Manifold


class GeodesicPath(ProbabilityPath):
    """The geodesic interpolation from the uniform distribution on a manifold to the data.

    ``noise`` is a standard Gaussian, as every loss draws it; :meth:`Manifold.from_gaussian` maps it
    to ``x_0`` exactly (its direction on the sphere, ``2 pi Phi(eps)`` on the torus), so ``noise`` is
    not ``x_0`` itself (:meth:`noise_is_prior` is ``False``, and a coupling is refused). Every
    simulator keeps samples on the manifold through :meth:`project`.
    """

    projects: ClassVar[bool] = True

    @attrs.define(frozen=True)
    class Params:
        manifold: Literal["sphere", "torus"] = param(
            "sphere",
            doc="The manifold: sphere (unit vectors in R^(d+1)) or torus (angles in [0, 2 pi)^d).",
            validator=attrs.validators.in_(tuple(MANIFOLDS)),
        )

    @classmethod
    def from_params(cls, params: GeodesicPath.Params, context: BuildContext) -> GeodesicPath:
        """Refuse, when the pipeline is built, data that are not vectors (images, tokens)."""
        if context.dataset is not None:
            shape = tuple(context.dataset.shape)
            if len(shape) != 1 or shape[0] < (2 if params.manifold == "sphere" else 1):
                raise CapabilityError(
                    f"path 'geodesic' on the {params.manifold} needs vector data of shape (n,), but the "
                    f"dataset '{context.dataset.display_name}' has samples of shape {shape}; use data on "
                    f'the {params.manifold} (e.g. kind = "vmf-mixture" or "torus-checkerboard")'
                )
        return cls(params)

    @property
    def manifold(self) -> Manifold:
        """The :class:`Manifold` the path lives on."""
        return MANIFOLDS[self.params.manifold]

    def _check(self, z: Tensor) -> None:
        if z.dim() != 2:
            raise CapabilityError(
                f"path '{self.display_name}' on the {self.params.manifold} needs points of shape "
                f'(B, n), got {tuple(z.shape)}; use a dataset of vectors (e.g. kind = "vmf-mixture")'
            )

    def project(self, x: Tensor) -> Tensor:
        return self.manifold.project(x)

    def sample_prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        return self.manifold.from_gaussian(torch.randn(shape, generator=generator, device=device))

    def sample(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return self.sample_with_target(z, t, noise, generator)[0]

    def sample_with_target(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t(x_t|z))`` from one Gaussian ``noise`` (drawn from ``generator`` when ``None``)."""
        self._check(z)
        if noise is None:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        manifold = self.manifold
        x0 = manifold.from_gaussian(noise)
        return manifold.geodesic_velocity(x0, manifold.log(x0, z), t.to(z.dtype)[:, None])

    def target_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``log_x(z) / (1 - t)``: the remaining geodesic covered in the remaining time (``t < 1``)."""
        self._check(z)
        return self.manifold.log(x, z) / (1.0 - t.to(x.dtype)[:, None])

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``-log vol(M)``: the uniform density with respect to the Riemannian volume, ``(B,)``."""
        self._check(x)
        return x.new_full((x.shape[0],), -self.manifold.log_volume(x.shape[1]))
