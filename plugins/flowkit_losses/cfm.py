"""Conditional flow matching (``docs/math.md``, "Losses")."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    Coupling,
    GaussianProbabilityPath,
    ProbabilityPath,
    TimeDistribution,
    call_network,
)
from flowkit.params import component
from flowkit_losses.common import (
    NetworkVelocity,
    TimeSampledLoss,
    TSampling,
    active_coupling,
    call_model,
    check_loss_weight,
    logit_mean_field,
    logit_std_field,
    loss_weight_field,
    mean_squared,
    sigma_data_field,
    snr_gamma_field,
    t_sampling_field,
    time_distribution,
    time_field,
)
from flowkit_losses.weights import LossWeight, time_weights, weighted_mean_squared


class CFMLoss(TimeSampledLoss):
    """``L_CFM = E_{t, z ~ p_data, x ~ p_t(.|z)} ||u^theta_t(x) - u_t(x|z)||^2`` (mean over dims).

    ``t`` is drawn on the path's ``t_range``; ``x`` and the target come from ``path.sample_with_target``.
    For a Gaussian path the target is the noise form ``alpha'_t z + beta'_t eps`` (for OT:
    ``z - (1 - sigma_min) eps``), which is regular even where ``beta_t`` vanishes; other paths give
    ``path.target_velocity(x, z, t)``. It has the same gradient as flow matching against the marginal
    field. Works on any path.

    ``coupling`` pairs the noise with the data before ``x`` is drawn (``independent``: as drawn;
    ``exact-ot``: minibatch OT-CFM; ``sinkhorn``: entropic); the loss only declares it
    (:attr:`coupling`), the training loop pairs each batch and passes the paired noise as ``x0``.
    Only a path whose noise is ``x_0 ~ p_init`` itself
    (:meth:`~flowkit.interfaces.ProbabilityPath.noise_is_prior`: OT and cosine Gaussian paths, VP,
    the Brownian bridge) can be coupled; :meth:`check` refuses the others when the pipeline is built.
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
        loss_weight: LossWeight = loss_weight_field()
        snr_gamma: float = snr_gamma_field()
        sigma_data: float = sigma_data_field()

    def check(self, path: ProbabilityPath) -> None:
        """Refuse a coupling on a path whose noise is not ``x_0 ~ p_init`` (e.g. VE: ``x_0 = z + 50 eps``)."""
        time_distribution(self.params, "cfm")  # refuses time and t_sampling both set
        check_loss_weight(self.params, "cfm", path)
        coupling = active_coupling(self.params.coupling)
        if coupling is None or path.noise_is_prior():
            return
        name = path.display_name
        raise CapabilityError(
            f"coupling '{coupling.registered_name}' pairs noise x_0 ~ p_init with data, but on path "
            f"'{name}' the noise is not x_0 (x_0 depends on the data point, e.g. alpha_0 = 1 for VE); "
            'use coupling = "independent", or a path that starts from the prior (schedule ot, cosine '
            'or vp, or [path] kind = "brownian-bridge")'
        )

    @property
    def coupling(self) -> Coupling | None:
        """The coupling of ``params.coupling`` (``None`` for the independent one): the training loop
        pairs each batch by it and passes the paired noise as ``x0``."""
        return active_coupling(self.params.coupling)

    def __call__(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
        x0: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss on data ``z (B, *D)`` (``y (B,)``: the labels a conditional model is given);
        draws ``t (B,)`` from ``generator``, then calls :meth:`loss_at`.

        The noise is ``x0 (B, *D)`` where given: already paired with ``z`` by the training loop (see
        :attr:`coupling`). Without it the noise is drawn from ``generator``, and a coupling (called
        outside the training loop) pairs it here, by ``y`` where there are labels: the same loss."""
        t = self.sample_times(z.shape[0], path, generator, z.device, z.dtype)
        if x0 is not None:
            noise = x0
        else:
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            coupling = self.coupling
            if coupling is not None:  # the labels travel with their data point (class-aware pairing by them)
                noise, z, y = coupling(noise, z, y, generator)
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
            predicted = call_network(model.network, x, t, y=y)
        else:
            predicted = call_model(model, x, t, y)
        p = self.params
        if p.loss_weight == "none":
            return mean_squared(predicted, target)
        assert isinstance(path, GaussianProbabilityPath)  # check() refused any other
        weight = time_weights(p.loss_weight, "velocity", path, t, p.snr_gamma, p.sigma_data)
        return weighted_mean_squared(predicted, target, weight)
