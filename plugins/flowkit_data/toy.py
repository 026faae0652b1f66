"""Synthetic 2D datasets, generated directly on the requested device.

Scale convention (all four datasets): the *noiseless* shape is centred at its exact mean and scaled
isotropically so that the mean per-coordinate variance is 1, i.e. ``(Var[x1] + Var[x2]) / 2 = 1``.
The shape is not distorted (both axes get the same factor), so a flat shape such as the moons keeps
its aspect ratio. ``noise`` is the standard deviation of isotropic Gaussian noise added *after*
scaling, in output units, so the mean per-coordinate variance of a noisy dataset is ``1 + noise**2``.

Sampling uses only torch ops on ``device`` with the given generator (no numpy, no host round-trip),
so training can call :meth:`sample` every step; a fixed generator seed gives the same samples.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import Dataset
from flowkit.params import param

_NONNEGATIVE = attrs.validators.ge(0.0)


def _target(n: int, generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Check ``n`` and the generator's device; return the device to sample on."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FlowkitError(f"number of samples must be a non-negative int, got {n!r}")
    target = torch.device(device) if device is not None else torch.device("cpu")
    if generator is not None and generator.device.type != target.type:
        raise FlowkitError(
            f"the generator lives on '{generator.device}' but samples were requested on '{target}'; "
            f"pass a generator made on the same device (torch.Generator(device='{target.type}'))"
        )
    return target


class _Toy2D(Dataset):
    """Base of the 2D toy datasets: event shape ``(2,)``."""

    @property
    def shape(self) -> tuple[int, ...]:
        return (2,)

    def _add_noise(self, points: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = self.params.noise
        if noise > 0:
            points = points + noise * torch.randn(
                points.shape, generator=generator, device=points.device, dtype=points.dtype
            )
        return points


class Moons(_Toy2D):
    """Two interleaving half circles (scikit-learn's ``make_moons``), standardised.

    The raw moons are ``(cos s, sin s)`` and ``(1 - cos s, 1/2 - sin s)`` for ``s ~ U[0, pi]``, each
    moon with probability 1/2. Their exact mean is ``(1/2, 1/4)``, their variances are ``3/4`` along
    x and ``5/8 - 1/pi - 1/16`` (about 0.244) along y; after centring and scaling by
    :attr:`Moons.SCALE` (about 1.418) the std is about 1.23 along x and 0.70 along y.
    """

    # Var[x] = 3/4; Var[y] = E[y^2] - 1/16 with E[y^2] = (1/2 + (3/4 - 2/pi)) / 2. Mean variance -> 1.
    _VAR_X = 0.75
    _VAR_Y = (0.5 + (0.75 - 2.0 / math.pi)) / 2.0 - 0.0625
    SCALE = 1.0 / math.sqrt((_VAR_X + _VAR_Y) / 2.0)
    MEAN = (0.5, 0.25)

    @attrs.define(frozen=True)
    class Params:
        noise: float = param(
            0.1, doc="Std of Gaussian noise added to each coordinate (output units).", validator=_NONNEGATIVE
        )

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` points of the two moons, shape ``(n, 2)``, float32, on ``device``."""
        device = _target(n, generator, device)
        angle = math.pi * torch.rand(n, generator=generator, device=device, dtype=torch.float32)
        inner = torch.rand(n, generator=generator, device=device, dtype=torch.float32) < 0.5
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Outer moon (cos, sin); inner moon (1 - cos, 1/2 - sin): select without branching.
        x = torch.where(inner, 1.0 - cos, cos) - self.MEAN[0]
        y = torch.where(inner, 0.5 - sin, sin) - self.MEAN[1]
        return self._add_noise(self.SCALE * torch.stack([x, y], dim=1), generator)


class Circles(_Toy2D):
    """Two concentric circles (scikit-learn's ``make_circles``), standardised.

    Radii are ``R`` and ``factor * R`` with ``R = 2 / sqrt(1 + factor**2)`` (mean variance 1); each
    circle with probability 1/2, the angle uniform. With the default ``factor = 0.5`` the radii are
    about 1.79 and 0.89.
    """

    @attrs.define(frozen=True)
    class Params:
        noise: float = param(
            0.05, doc="Std of Gaussian noise added to each coordinate (output units).", validator=_NONNEGATIVE
        )
        factor: float = param(
            0.5,
            doc="Radius of the inner circle relative to the outer one, in (0, 1).",
            validator=[attrs.validators.gt(0.0), attrs.validators.lt(1.0)],
        )

    @property
    def radius(self) -> float:
        """Radius of the outer circle."""
        return 2.0 / math.sqrt(1.0 + self.params.factor**2)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` points of the two circles, shape ``(n, 2)``, float32, on ``device``."""
        device = _target(n, generator, device)
        angle = (2.0 * math.pi) * torch.rand(n, generator=generator, device=device, dtype=torch.float32)
        inner = torch.rand(n, generator=generator, device=device, dtype=torch.float32) < 0.5
        radius = torch.full_like(angle, self.radius).masked_fill(inner, self.params.factor * self.radius)
        points = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return self._add_noise(points, generator)


class EightGaussians(_Toy2D):
    """Eight Gaussians with centres evenly spaced on a circle, standardised.

    Centres ``sqrt(2) * (cos(k pi / 4), sin(k pi / 4))``, ``k = 0..7`` (radius ``sqrt(2)`` gives mean
    variance 1), equal weights, each Gaussian with std ``noise``. Its exact density
    (:meth:`log_prob`) is the mixture's, ``log (1/8) sum_k N(x; c_k, noise^2 I)``, for ``noise > 0``: a
    likelihood evaluation reports the exact value beside the estimate, and a path whose source is this
    dataset has a prior log-density.
    """

    RADIUS = math.sqrt(2.0)

    @attrs.define(frozen=True)
    class Params:
        noise: float = param(0.1, doc="Std of each Gaussian (output units).", validator=_NONNEGATIVE)

    def centres(self, device: torch.device | str | None = None) -> Tensor:
        """The eight centres, shape ``(8, 2)``, float32."""
        angle = torch.arange(8, device=device, dtype=torch.float32) * (math.pi / 4.0)
        return self.RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` points, shape ``(n, 2)``, float32, on ``device``."""
        device = _target(n, generator, device)
        component = torch.randint(0, 8, (n,), generator=generator, device=device)
        angle = component.to(torch.float32) * (math.pi / 4.0)
        points = self.RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return self._add_noise(points, generator)

    @property
    def provides_log_prob(self) -> bool:
        """Whether the density exists: ``noise > 0`` (noiseless, the eight points have none)."""
        return self.params.noise > 0

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x) = logsumexp_k [log N(x; c_k, noise^2 I)] - log 8`` for ``x (B, 2)``, shape ``(B,)``,
        in float64 (the mixture's terms are far apart in the tails)."""
        if not self.provides_log_prob:
            super().log_prob(x)  # raises: no density
        var = self.params.noise**2
        centres = self.centres(x.device).to(torch.float64)
        squared = (x.to(torch.float64)[:, None, :] - centres[None, :, :]).square().sum(dim=2)
        log_normal = -0.5 * squared / var - math.log(2.0 * math.pi * var)
        return torch.logsumexp(log_normal, dim=1) - math.log(8.0)


class Checkerboard(_Toy2D):
    """Uniform on the dark squares of a ``squares x squares`` checkerboard centred at 0.

    The board covers ``[-a, a]^2`` with ``a = sqrt(3)`` (each coordinate is then uniform on
    ``[-a, a]`` with variance 1 for an even ``squares``). Cell ``(i, j)`` (column ``i`` along x, row
    ``j`` along y, counted from the corner ``(-a, -a)``) is dark when ``i + j`` is even; every dark
    cell is equally likely. The data has no noise parameter: noise would blur the squares' edges,
    which are the point of this dataset.
    """

    HALF_WIDTH = math.sqrt(3.0)

    @attrs.define(frozen=True)
    class Params:
        squares: int = param(
            4, doc="Cells per side of the board (at least 2).", validator=attrs.validators.ge(2)
        )

    @property
    def cell_width(self) -> float:
        """Side length of one cell."""
        return 2.0 * self.HALF_WIDTH / self.params.squares

    def is_dark(self, points: Tensor) -> Tensor:
        """Boolean ``(n,)``: whether each point of ``points (n, 2)`` lies on a dark cell of the board."""
        cells = torch.floor((points + self.HALF_WIDTH) / self.cell_width).long()
        inside = ((cells >= 0) & (cells < self.params.squares)).all(dim=1)
        return inside & ((cells[:, 0] + cells[:, 1]) % 2 == 0)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` points, shape ``(n, 2)``, float32, on ``device``."""
        device = _target(n, generator, device)
        squares = self.params.squares
        # Draw the k-th dark cell (row-major order) uniformly, so odd boards stay uniform too.
        n_dark = (squares * squares + 1) // 2
        k = torch.randint(0, n_dark, (n,), generator=generator, device=device)
        if squares % 2 == 1:
            # Odd board: the flat index f = j * squares + i has the parity of i + j, so the dark
            # cells are exactly the even flat indices.
            flat = 2 * k
        else:
            # Even board: row j has squares / 2 dark cells, at i = j % 2, j % 2 + 2, ...
            per_row = squares // 2
            row = k // per_row
            flat = row * squares + 2 * (k % per_row) + row % 2
        column, row = flat % squares, flat // squares
        offset = torch.rand((n, 2), generator=generator, device=device, dtype=torch.float32)
        cells = torch.stack([column, row], dim=1).to(torch.float32)
        return (cells + offset) * self.cell_width - self.HALF_WIDTH
