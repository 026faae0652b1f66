"""Conditional flow matching (``MATH.md``, "Losses")."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from flowkit.interfaces import Loss, Network, ProbabilityPath
from flowkit_losses.common import (
    NetworkVelocity,
    TSampling,
    logit_mean_field,
    logit_std_field,
    mean_squared,
    sample_times,
    t_sampling_field,
)


class CFMLoss(Loss):
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

    def model_role(self, network: Network, path: ProbabilityPath) -> nn.Module:
        """The network as a :class:`~flowkit.interfaces.VectorField` (``forward = network``)."""
        return NetworkVelocity(network)

    def sample_times(
        self,
        n: int,
        path: ProbabilityPath,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` training times on ``path.t_range``, shape ``(n,)``."""
        p = self.params
        return sample_times(
            n,
            path.t_range,
            p.t_sampling,
            p.logit_mean,
            p.logit_std,
            generator,
            device or torch.device("cpu"),
            dtype,
        )

    def __call__(
        self, model: nn.Module, path: ProbabilityPath, z: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Scalar loss on data ``z (B, *D)``; draws ``t (B,)`` then ``eps (B, *D)`` from ``generator``."""
        t = self.sample_times(z.shape[0], path, generator, z.device, z.dtype)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return self.loss_at(model, path, z, t, noise)

    def loss_at(self, model: nn.Module, path: ProbabilityPath, z: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The loss at given times ``t (B,)`` and noise ``(B, *D)`` (deterministic); a scalar."""
        x, target = path.sample_with_target(z, t, noise)
        if type(model) is NetworkVelocity:  # skip the wrapper's own module call in the hot loop
            model = model.network
        return mean_squared(model(x, t), target)
