"""Denoising score matching (``docs/math.md``, "Losses")."""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    Coupling,
    GaussianProbabilityPath,
    NoisePredictor,
    ProbabilityPath,
    TimeDistribution,
    per_sample,
)
from flowkit.params import component, param
from flowkit_losses.common import (
    NetworkScore,
    NoisePredictionScore,
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
from flowkit_losses.weights import LossWeight, Target, time_weights, weighted_mean_squared


class DSMLoss(TimeSampledLoss):
    """Denoising score matching; same gradient as score matching with the same weighting.

    * ``weighting = "noise"`` (default): ``E ||beta_t s^theta_t(x) + eps||^2``, i.e. the weight
      ``lambda_t = beta_t^2`` on ``||s - grad log p_t(x|z)||^2``. :meth:`model_role` parametrizes the
      score by noise prediction, ``s = -network(x, t) / beta_t``, so the loss is ``||network(x, t) -
      eps||^2``: the network's target is of order 1 at every ``t``, and nothing is divided by a small
      ``beta_t`` while training. The plain weighting's target ``-eps / beta_t`` has variance
      ``E[1 / beta_t^2]``, which diverges as ``beta_t -> 0`` (for OT, ``∫ dt / (1 - t)^2``): its
      gradients are dominated by the few ``t`` near 1. Hence the default. Needs a Gaussian path.
    * ``weighting = "score"``: ``E ||s^theta_t(x) - grad log p_t(x|z)||^2``; the network is the score.
      Works on any path with a conditional score.

    Means are over the batch and the event dims (see :func:`flowkit_losses.common.mean_squared`).
    """

    trains = "score"

    @attrs.define(frozen=True)
    class Params:
        weighting: Literal["noise", "score"] = param(
            "noise",
            doc="'noise': beta_t^2-weighted, network predicts eps (stable); 'score': plain.",
            validator=attrs.validators.in_(["noise", "score"]),
        )
        time: TimeDistribution = time_field()
        t_sampling: TSampling = t_sampling_field()
        logit_mean: float = logit_mean_field()
        logit_std: float = logit_std_field()
        coupling: Coupling = component(
            "independent", doc="Only 'independent': a coupling would change the score DSM learns."
        )
        loss_weight: LossWeight = loss_weight_field()
        snr_gamma: float = snr_gamma_field()
        sigma_data: float = sigma_data_field()

    def check(self, path: ProbabilityPath) -> None:
        """Raise :class:`CapabilityError` when ``path`` gives no score (or no noise scale, for "noise"),
        or when a coupling other than ``independent`` is set."""
        time_distribution(self.params, "dsm")  # refuses time and t_sampling both set
        check_loss_weight(self.params, "dsm", path)
        name = path.display_name
        coupling = active_coupling(self.params.coupling)
        if coupling is not None:
            raise CapabilityError(
                f"loss 'dsm' cannot use coupling '{coupling.registered_name}': its target -eps / beta_t "
                "is the score of p_t(x|z) only when the noise is independent of the data; use "
                '[loss] kind = "cfm" for OT-CFM (or "sb-cfm" for a score on the Brownian bridge), or '
                'coupling = "independent"'
            )
        if not path.provides_score:
            raise CapabilityError(
                f"loss 'dsm' trains a score, but path '{name}' provides no conditional score; use "
                f'[loss] kind = "cfm" (trains a velocity) or a path with a score '
                f'([path] kind = "gaussian")'
            )
        if self.params.weighting == "noise" and not isinstance(path, GaussianProbabilityPath):
            raise CapabilityError(
                f"loss 'dsm' with weighting = \"noise\" needs a Gaussian path (its noise scale beta_t), "
                f'but path \'{name}\' is not one; use weighting = "score" or [path] kind = "gaussian"'
            )
        if isinstance(path, GaussianProbabilityPath):
            _check_ends(path)

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        """A :class:`~flowkit.interfaces.ScoreModel`: ``-network / beta_t`` ("noise") or ``network``."""
        self.check(path)
        if self.params.weighting == "noise":
            assert isinstance(path, GaussianProbabilityPath)  # check() refused any other
            return NoisePredictionScore(network, path)
        return NetworkScore(network)

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
        """The loss at given times ``t (B,)`` and noise ``(B, *D)``; a scalar. ``y (B,)``: labels of a
        conditional model."""
        x = path.sample(z, t, noise, generator)
        if self.params.weighting == "noise":
            if isinstance(model, NoisePredictor):
                inputs = {} if y is None else {"y": y}
                return self._squared(model.predict_noise(x, t, **inputs), noise, path, t, "noise")
            assert isinstance(path, GaussianProbabilityPath)
            beta = per_sample(path.schedule.coefficients(t.to(x.dtype)).beta, x)
            return self._squared(beta * call_model(model, x, t, y), -noise, path, t, "noise")
        if isinstance(path, GaussianProbabilityPath):
            target = path.target_score_from_noise(noise, t)
        else:
            target = path.target_score(x, z, t)
        return self._squared(call_model(model, x, t, y), target, path, t, "score")

    def _squared(
        self, predicted: Tensor, target: Tensor, path: ProbabilityPath, t: Tensor, of: Target
    ) -> Tensor:
        """The mean squared error, weighted over time by ``loss_weight`` (the error being that of ``of``)."""
        p = self.params
        if p.loss_weight == "none":
            return mean_squared(predicted, target)
        assert isinstance(path, GaussianProbabilityPath)  # check() refused any other
        weight = time_weights(p.loss_weight, of, path, t, p.snr_gamma, p.sigma_data)
        return weighted_mean_squared(predicted, target, weight)


def _check_ends(path: GaussianProbabilityPath) -> None:
    """Refuse, at build time, a schedule whose ``beta_t`` is 0 (or whose coefficients are not finite) at
    an end of its ``t_range``: the score DSM trains is ``-eps / beta_t`` and the sampler's score model
    divides by ``beta_t``, so training would run to the end and then give only non-finite samples
    (a ``Linear`` schedule, ``beta_t = 1 - t``, left with the default ``t_range = (0, 1)``)."""
    lo, hi = path.t_range
    ends = torch.tensor([lo, hi], dtype=torch.float64)
    c = path.schedule.coefficients(ends).tensors(ends)
    name = path.schedule.display_name
    for i, t in enumerate((lo, hi)):
        values = [
            float(v[i]) if isinstance(v, Tensor) else float(v) for v in (c.alpha, c.beta, c.d_alpha, c.d_beta)
        ]
        if not all(math.isfinite(v) for v in values) or not values[1] > 0:
            raise CapabilityError(
                f"loss 'dsm': schedule '{name}' has beta_t = {values[1]:g} at t = {t:g}, an end of its "
                f"t_range [{lo:g}, {hi:g}]; the score dsm trains divides by beta_t, so the samples would "
                f"not be finite: give the schedule a t_range where beta_t > 0 (e.g. t_range = "
                f'(0.0, 1.0 - 1e-5)) or use [loss] kind = "cfm"'
            )
