"""Data to data: the linear interpolant between a source dataset and the data (``docs/math.md``,
"Data to data").

:class:`DataToDataPath` (``data-to-data``) draws ``x_0`` from a dataset of its own (``source``), not
from a Gaussian: ``x_t = (1 - t) x_0 + t z + sigma eps`` with ``eps ~ N(0, I)`` (only where ``sigma > 0``),
and the conditional velocity given the pair is ``u_t(x | x_0, z) = z - x_0``. A coupling pairs the
source batch with the data batch exactly as it pairs noise with data (``exact-ot``: minibatch OT
between the two datasets); the training loop draws ``x_0`` by :meth:`DataToDataPath.sample_prior`
(``ProbabilityPath.source``), and sampling starts from it. The prior's log-density is the source's
``log_prob``, where the source has one.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import BuildContext, Dataset, ProbabilityPath, per_sample
from flowkit.params import COMPONENT, DOC, param


class DataToDataPath(ProbabilityPath):
    """``x_t = (1 - t) x_0 + t z + sigma eps`` from ``x_0 ~ source`` to a data point ``z``; ``x``, ``z``,
    ``x_0`` are ``(B, *D)``, ``t`` is ``(B,)``.

    The velocity target of :meth:`sample_with_target` is ``z - x_0``, conditional on the pair (what a
    loss trains on, with or without a coupling). ``sigma`` (torchcfm's ``ConditionalFlowMatcher``
    sigma) blurs the interpolant by a constant Gaussian, which does not change the target. The path
    has no score and converts no roles (its source is no Gaussian): it samples with ``dynamics =
    "flow"``.
    """

    @attrs.define(frozen=True)
    class Params:
        # Required: a nested component without a default (params.component always has one).
        source: Dataset = attrs.field(
            metadata={
                DOC: 'The dataset x_0 is drawn from (a table, e.g. { kind = "eight-gaussians" }).',
                COMPONENT: True,
            }
        )
        sigma: float = param(
            0.0,
            doc="Std of the Gaussian blur around the interpolant (0: the straight line).",
            validator=attrs.validators.ge(0.0),
        )

    def __init__(self, params: DataToDataPath.Params | None = None) -> None:
        super().__init__(params)
        if not isinstance(self.params.source, Dataset):
            raise FlowkitError(
                "source: missing the dataset x_0 is drawn from; set it, e.g. "
                'source = { kind = "eight-gaussians" }'
            )
        self._source: Dataset = self.params.source

    @classmethod
    def from_params(cls, params: DataToDataPath.Params, context: BuildContext) -> DataToDataPath:
        """The path, its source checked against the data's event shape (``context.dataset``)."""
        path = cls(params)
        data = context.dataset
        if data is not None and tuple(path.source.shape) != tuple(data.shape):
            raise FlowkitError(
                f"source: dataset '{path.source.display_name}' has samples of shape "
                f"{tuple(path.source.shape)}, but [data] '{data.display_name}' has {tuple(data.shape)}; "
                "a flow from data to data needs both of one shape"
            )
        return path

    @property
    def source(self) -> Dataset:
        """The dataset ``x_0`` is drawn from."""
        return self._source

    @property
    def sigma(self) -> float:
        return float(self.params.sigma)

    def noise_is_prior(self) -> bool:
        """``True``: the ``noise`` given to :meth:`sample` is ``x_0`` itself, so a coupling may pair it."""
        return True

    def sample_prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """``x_0 ~ source``, ``shape = (B, *D)`` (``D`` the source's event shape), float32."""
        if tuple(shape[1:]) != tuple(self._source.shape):
            raise FlowkitError(
                f"path 'data-to-data': asked for source points of shape {tuple(shape)}, but source "
                f"'{self._source.display_name}' has samples of shape {tuple(self._source.shape)}"
            )
        return self._source.sample(int(shape[0]), generator=generator, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log p_source(x)`` for ``x (B, *D)``, shape ``(B,)`` in ``x``'s dtype: the source's density.

        Raises :class:`CapabilityError` naming the source where it has none (e.g. ``moons``)."""
        if not self._source.provides_log_prob:
            raise CapabilityError(
                f"path '{self.display_name}': its source dataset '{self._source.display_name}' has no "
                "density; likelihood needs a source with log_prob (e.g. eight-gaussians with noise > 0)"
            )
        return self._source.log_prob(x).to(x.dtype)

    def _source_points(self, z: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """``x_0``: ``noise`` where given (already drawn, maybe paired), else drawn from the source."""
        if noise is None:
            return self.sample_prior(tuple(z.shape), generator, z.device).to(z.dtype)
        if noise.shape != z.shape:
            raise FlowkitError(
                f"source points have shape {tuple(noise.shape)}, expected that of z {tuple(z.shape)}"
            )
        return noise

    def _check_t(self, z: Tensor, t: Tensor) -> Tensor:
        """``t (B,)`` shaped to broadcast over ``z (B, *D)``."""
        if t.dim() != 1 or t.shape[0] not in (1, z.shape[0]):
            raise FlowkitError(f"t must have shape (B,) = ({z.shape[0]},), got {tuple(t.shape)}")
        return per_sample(t.to(z.dtype), z)

    def sample(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``x_t = (1 - t) x_0 + t z (+ sigma eps)``, ``x_0 = noise`` (drawn from the source when not
        given, then ``eps`` from ``generator``); ``(B, *D)``."""
        return self.sample_with_target(z, t, noise, generator)[0]

    def sample_with_target(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x_t, z - x_0)`` with ``x_0 = noise`` (see :meth:`sample`); both ``(B, *D)``."""
        tt = self._check_t(z, t)
        x0 = self._source_points(z, noise, generator)
        x = x0 + tt * (z - x0)
        if self.sigma > 0:
            eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            x = x + self.sigma * eps
        return x, z - x0

    def target_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """``u_t(x | z) = (z - x) / (1 - t)``, ``(B, *D)``: for ``sigma = 0`` the point ``x`` and ``z``
        fix ``x_0 = (x - t z) / (1 - t)``, so this is ``z - x_0``; ``t < 1``.

        With ``sigma > 0`` the target given ``z`` alone depends on the unknown pair (no closed form):
        raises :class:`CapabilityError`; losses use :meth:`sample_with_target`."""
        if self.sigma > 0:
            raise CapabilityError(
                f"path '{self.display_name}' with sigma > 0 has no velocity target given the data point "
                "alone; use sample_with_target (a loss such as cfm does)"
            )
        tt = self._check_t(x, t)
        if float(tt.max()) >= 1.0:
            raise FlowkitError("target_velocity: t must be < 1 (x_0 is undetermined at t = 1)")
        return (z - x) / (1.0 - tt)
