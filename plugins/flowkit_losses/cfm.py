"""Conditional flow matching (``docs/math.md``, "Losses")."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import Coupling, PreparedBatch, ProbabilityPath, TimeDistribution, call_network
from flowkit.params import component
from flowkit_losses.common import (
    NetworkVelocity,
    TimeSampledLoss,
    TSampling,
    active_coupling,
    call_model,
    logit_mean_field,
    logit_std_field,
    mean_squared,
    t_sampling_field,
    time_distribution,
    time_field,
)


class CFMLoss(TimeSampledLoss):
    """``L_CFM = E_{t, z ~ p_data, x ~ p_t(.|z)} ||u^theta_t(x) - u_t(x|z)||^2`` (mean over dims).

    ``t`` is drawn on the path's ``t_range``; ``x`` and the target come from ``path.sample_with_target``.
    For a Gaussian path the target is the noise form ``alpha'_t z + beta'_t eps`` (for OT:
    ``z - (1 - sigma_min) eps``), which is regular even where ``beta_t`` vanishes; other paths give
    ``path.target_velocity(x, z, t)``. It has the same gradient as flow matching against the marginal
    field. Works on any path.

    ``coupling`` pairs the drawn noise with the data before ``x`` is drawn (``independent``: as drawn;
    ``exact-ot``: minibatch OT-CFM; ``sinkhorn``: entropic). Only a path whose noise is ``x_0 ~ p_init``
    itself (:meth:`~flowkit.interfaces.ProbabilityPath.noise_is_prior`: OT and cosine Gaussian paths,
    VP, the Brownian bridge) can be coupled; :meth:`check` refuses the others when the pipeline is built.
    """

    trains = "velocity"

    @attrs.define(frozen=True)
    class Params:
        time: TimeDistribution = time_field()
        t_sampling: TSampling = t_sampling_field()
        logit_mean: float = logit_mean_field()
        logit_std: float = logit_std_field()
        coupling: Coupling = component(
            "independent", doc="Pairing of noise and data per batch (independent, exact-ot, sinkhorn)."
        )

    def check(self, path: ProbabilityPath) -> None:
        """Refuse a coupling on a path whose noise is not ``x_0 ~ p_init`` (e.g. VE: ``x_0 = z + 50 eps``)."""
        time_distribution(self.params, "cfm")  # refuses time and t_sampling both set
        coupling = active_coupling(self.params.coupling)
        if coupling is None or path.noise_is_prior():
            return
        name = path.registered_name or type(path).__name__
        raise CapabilityError(
            f"coupling '{coupling.registered_name}' pairs noise x_0 ~ p_init with data, but on path "
            f"'{name}' the noise is not x_0 (x_0 depends on the data point, e.g. alpha_0 = 1 for VE); "
            'use coupling = "independent", or a path that starts from the prior (schedule ot, cosine '
            'or vp, or [path] kind = "brownian-bridge")'
        )

    def __call__(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss on data ``z (B, *D)`` (with its labels ``y (B,)`` for a conditional model, which
        a class-aware coupling pairs by): draws ``t (B,)`` and the noise, pairs them by the coupling,
        then calls :meth:`loss_at`."""
        coupling = active_coupling(self.params.coupling)
        if coupling is None:
            return super().__call__(model, path, z, generator, y=y)
        batch = self.prepare(path, z, generator, y=y)
        return self.loss_on(model, path, batch, batch.solve(), generator)

    def pairs_ahead(self) -> bool:
        """Whether the coupling's solve is worth running a step ahead on a worker (``exact-ot``)."""
        coupling = active_coupling(self.params.coupling)
        return coupling is not None and coupling.background

    def prepare(
        self,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> PreparedBatch:
        """Draws ``t (B,)`` then the noise ``(B, *D)`` from ``generator`` (as :meth:`__call__` does);
        ``solve()`` is the coupling's :meth:`~flowkit.interfaces.Coupling.solve` of noise and data (by
        the labels ``y``, where there are some)."""
        coupling = active_coupling(self.params.coupling)
        t = self.sample_times(z.shape[0], path, generator, z.device, z.dtype)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        draws = {"z": z, "t": t, "noise": noise, "y": y}
        if coupling is None:
            return PreparedBatch(draws, lambda: None)
        return PreparedBatch(draws, lambda: coupling.solve(noise, z, y))

    def loss_on(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        batch: PreparedBatch,
        solution: object,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The loss on the pairs of a batch from :meth:`prepare`: the coupling's ``pair`` (any random
        choice of it from ``generator``), then :meth:`loss_at` (a path's own draws from ``generator``)."""
        d = batch.draws
        z, t, noise, y = d["z"], d["t"], d["noise"], d["y"]
        coupling = active_coupling(self.params.coupling)
        if coupling is not None:  # the labels travel with their data point (class-aware pairing by them)
            noise, z, y = coupling.pair(solution, noise, z, y, generator)
        return self.loss_at(model, path, z, t, noise, generator, y=y)

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        """The network as a :class:`~flowkit.interfaces.VectorField` (``forward = network``)."""
        return NetworkVelocity(network)

    def loss_at(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        t: Tensor,
        noise: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """The loss at given times ``t (B,)`` and noise ``(B, *D)``; a scalar. A path with more
        randomness than ``noise`` draws it from ``generator``. ``y (B,)``: labels of a conditional model."""
        x, target = path.sample_with_target(z, t, noise, generator)
        if type(model) is NetworkVelocity:  # skip the wrapper's own module call in the hot loop
            return mean_squared(call_network(model.network, x, t, y=y), target)
        return mean_squared(call_model(model, x, t, y), target)
