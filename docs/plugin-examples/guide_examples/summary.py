"""A kind of its own: ``statistic``, a number computed from the samples, chosen in a ``[summary]`` table."""

from __future__ import annotations

import abc

import attrs
from torch import Tensor

from flowkit.interfaces import Component
from flowkit.params import component, param


class Statistic(Component):
    """The interface of the kind ``statistic``: ``__call__(samples (N, *D)) -> float``."""

    @abc.abstractmethod
    def __call__(self, samples: Tensor) -> float: ...


class MeanRadius(Statistic):
    """The mean Euclidean norm of the samples, ``mean_i ||x_i||``: a ring's radius, for ring data."""

    def __call__(self, samples: Tensor) -> float:
        return float(samples.flatten(1).norm(dim=1).mean())


@attrs.define(frozen=True)
class SummarySettings:
    """``[summary]``: a statistic of the samples, written into ``metrics.json``."""

    statistic: Statistic = component("mean-radius", doc="The statistic (a component of the kind statistic).")
    key: str = param("summary", doc="Its key in metrics.json.")
