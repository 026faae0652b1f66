"""Records of the contract: plain values that components and hooks pass around.

Nothing here is a component: the broadcasting helper :func:`per_sample`, a schedule's
:class:`Coefficients`, what sampling produces (:class:`Samples`) and what ``flowkit_register``
receives (:class:`Registrar`). It imports no other flowkit module, so every contract module may use it;
:mod:`flowkit.interfaces` re-exports each name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, overload

import attrs
from torch import Tensor

Role = Literal["velocity", "score"]
#: ``progress(done, total)``: a simulator reports how far it is (steps, or thousandths of the time span).
Progress = Callable[[int, int], None]


@overload
def per_sample(values: Tensor, like: Tensor) -> Tensor: ...
@overload
def per_sample(values: float, like: Tensor) -> float: ...
def per_sample(values: Tensor | float, like: Tensor) -> Tensor | float:
    """View per-sample ``values (B,)`` as ``(B, 1, ..., 1)`` to broadcast over ``like (B, *D)``.

    A Python float (a constant coefficient) is returned as it is: it broadcasts without a tensor.
    """
    if isinstance(values, (int, float)):
        return float(values)
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


@attrs.frozen
class Coefficients:
    """``alpha_t``, ``beta_t`` and their time derivatives for a Gaussian path, each ``(B,)`` or a float.

    A schedule returns constants (OT's ``alpha' = 1``) as Python floats: they broadcast for free.
    """

    alpha: Tensor | float
    beta: Tensor | float
    d_alpha: Tensor | float
    d_beta: Tensor | float

    def broadcast(self, like: Tensor) -> Coefficients:
        """The same coefficients shaped ``(B, 1, ..., 1)`` to broadcast over ``like (B, *D)``."""
        return Coefficients(*(per_sample(c, like) for c in attrs.astuple(self, recurse=False)))


@attrs.define(frozen=True)
class NoParams:
    """Parameters of a component that takes none."""


@attrs.frozen
class Samples:
    """What the sampling stage produces: ``samples (N, *D)`` on the CPU, a short ``trajectory
    (T + 1, K, *D)`` of the first ``K`` of them (or ``None``), the function evaluations ``nfe``, and
    for a conditional model the ``labels (N,)`` the samples were drawn for."""

    samples: Tensor
    trajectory: Tensor | None = None
    nfe: int = 0
    #: The class each sample was asked for ``(N,)`` int64 (the null class: unconditional), or ``None``.
    labels: Tensor | None = None


class Registrar(Protocol):
    """What ``flowkit_register`` receives: adds components, kinds and config tables."""

    def add(self, kind: str, name: str, cls: type) -> None:
        """Register ``cls`` (derived from ``KINDS[kind]``) as the ``kind`` component ``name``."""

    def add_kind(self, kind: str, interface: type) -> None:
        """A new kind of component whose classes derive from ``interface``."""

    def add_table(self, name: str, params: type) -> None:
        """A pipeline table ``[name]`` validated against the attrs class ``params``."""
