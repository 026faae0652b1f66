"""Datasets: a ring of Gaussians with its exact density, and points read from a CSV file."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Dataset
from flowkit.params import param


class GaussianRing(Dataset):
    """``modes`` Gaussians of std ``std`` with equal weights, centred evenly on a circle of ``radius``.

    ``p(x) = (1/K) sum_k N(x; c_k, std^2 I)`` with ``c_k = radius (cos 2 pi k/K, sin 2 pi k/K)``: its
    exact ``log_prob`` lets a likelihood evaluation report the gap to the truth.
    """

    @attrs.define(frozen=True)
    class Params:
        modes: int = param(6, doc="Number of Gaussians on the ring.", validator=attrs.validators.ge(1))
        radius: float = param(2.0, doc="Radius of the ring of centres.", validator=attrs.validators.gt(0))
        std: float = param(0.2, doc="Standard deviation of each Gaussian.", validator=attrs.validators.gt(0))

    @property
    def shape(self) -> tuple[int, ...]:
        return (2,)

    def centres(self, device: torch.device | None = None) -> Tensor:
        """The ``(K, 2)`` centres."""
        angle = torch.arange(self.params.modes, device=device) * (2 * math.pi / self.params.modes)
        return self.params.radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` points ``(n, 2)``: a mode drawn uniformly, then its Gaussian noise."""
        mode = torch.randint(0, self.params.modes, (n,), generator=generator, device=device)
        noise = torch.randn((n, 2), generator=generator, device=device)
        return self.centres(device)[mode] + self.params.std * noise

    @property
    def provides_log_prob(self) -> bool:
        return True

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` for ``x (B, 2)``, shape ``(B,)``."""
        squared = (x[:, None, :] - self.centres(x.device).to(x.dtype)).pow(2).sum(-1)  # (B, K)
        log_normal = -squared / (2 * self.params.std**2) - math.log(2 * math.pi * self.params.std**2)
        return torch.logsumexp(log_normal, dim=1) - math.log(self.params.modes)


class CSVPoints(Dataset):
    """Points read from a CSV file, one ``(D,)`` point per row; rows drawn uniformly with replacement.

    A relative ``path`` is resolved against the folder of the pipeline file, or the working directory
    for a pipeline given as a dict: the rule of flowkit's own file datasets.
    """

    @attrs.define(frozen=True)
    class Params:
        path: str = param(doc="CSV file of points, one per row; relative to the pipeline file.")

    def __init__(self, params: CSVPoints.Params, base_dir: Path | None = None) -> None:
        super().__init__(params)
        file = Path(params.path).expanduser()
        self.file = file if file.is_absolute() or base_dir is None else base_dir / file
        if not self.file.is_file():
            raise FlowkitError(f"dataset 'csv-points': file '{self.file}' does not exist")
        self.points = torch.from_numpy(np.loadtxt(self.file, delimiter=",", ndmin=2)).float()

    @classmethod
    def from_params(cls, params: CSVPoints.Params, context: BuildContext) -> CSVPoints:
        source = Path(context.source)  # the pipeline file, or "<dict>" (no file: the working directory)
        dataset = cls(params, base_dir=source.parent if source.is_file() else None)
        # The run directory's resolved pipeline.toml must find the file from anywhere: record it absolute.
        dataset.params = attrs.evolve(params, path=str(dataset.file.resolve()))
        return dataset

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.points.shape[1:])

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """``n`` rows ``(n, *D)`` drawn with ``generator`` (on ``device``, as the generator is)."""
        rows = torch.randint(0, self.points.shape[0], (n,), generator=generator, device=device)
        return self.points.to(device)[rows]
