"""Conditional flow matching (``MATH.md``, "Losses")."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from flowkit.interfaces import ProbabilityPath
from flowkit_losses.common import (
    NetworkVelocity,
    TimeSampledLoss,
    TSampling,
    call_network,
    logit_mean_field,
    logit_std_field,
    mean_squared,
    t_sampling_field,
)


class CFMLoss(TimeSampledLoss):
    """``L_CFM = E_{t, z ~ p_data, x ~ p_t(.|z)} ||u^theta_t(x) - u_t(x|z)||^2`` (mean over dims).

    ``t`` is drawn on the path's ``t_range``; ``x`` and the target come from ``path.sample_with_target``.
    For a Gaussian path the target is the noise form ``alpha'_t z + beta'_t eps`` (for OT:
    ``z - (1 - sigma_min) eps``), which is regular even where ``beta_t`` vanishes; other paths give
    ``path.target_velocity(x, z, t)``. It has the same gradient as flow matching against the marginal
    field. Works on any path.
    """

    trains = "velocity"

    @attrs.define(frozen=True)
    class Params:
        t_sampling: TSampling = t_sampling_field()
        logit_mean: float = logit_mean_field()
        logit_std: float = logit_std_field()

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
            model = model.network
        return mean_squared(call_network(model, x, t, y), target)
