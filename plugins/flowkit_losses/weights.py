"""Loss weightings over time for a Gaussian path (``loss_weight`` of ``cfm`` and ``dsm``): ``none``,
``min-snr`` (Hang et al. 2023, arXiv 2303.09556), ``soft-min-snr`` (Crowson et al. 2024, k-diffusion)
and ``edm`` (Karras et al. 2022, lambda(sigma)).

Each is defined by its weight on the error of the data prediction, ``w_z(t) ||z_hat - z||^2``, with
``x_t = alpha_t z + beta_t eps`` (flowkit's time: noise at ``t = 0``), the signal-to-noise ratio
``SNR = alpha_t^2 / beta_t^2`` and EDM's noise level ``sigma = beta_t / alpha_t``:

* ``min-snr``: ``w_z = min(SNR, gamma)``;
* ``soft-min-snr``: ``w_z = 1 / (1 / SNR + 1 / gamma)`` (k-diffusion's ``(sigma sigma_d)^2 /
  (sigma^2 + sigma_d^2)^2`` on its scaled target is this with ``gamma = 1 / sigma_d^2``);
* ``edm``: ``w_z = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 = SNR + 1 / sigma_d^2``.

At fixed ``x_t``, the errors of the other predictions are multiples of the data error
(docs/math.md, "Loss weightings"): ``eps_hat - eps = -(alpha / beta) (z_hat - z)``, the score's is
``1 / beta`` times the noise's, and the velocity's ``(alpha' beta - alpha beta') / beta`` times the
data's. So a loss on the noise (dsm, noise) weights its error by ``w_z / SNR``, on the score by
``w_z beta^2 / SNR``, and on the velocity (cfm) by ``w_z beta^2 / k^2`` with ``k = alpha' beta -
alpha beta'``. Each is written here with ``alpha^2`` and ``beta^2`` only, finite at both ends of the
path wherever its limit is.
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from torch import Tensor

from flowkit.interfaces import GaussianProbabilityPath

LossWeight = Literal["none", "min-snr", "soft-min-snr", "edm"]
WEIGHTS: tuple[str, ...] = ("none", "min-snr", "soft-min-snr", "edm")
#: What a loss's squared error is the error of.
Target = Literal["velocity", "noise", "score"]


def noise_weight(kind: LossWeight, a2: Tensor, b2: Tensor, gamma: float, sigma_data: float) -> Tensor:
    """``w_z / SNR``, the weight on the noise error, from ``alpha^2`` and ``beta^2`` ``(B,)``."""
    if kind == "min-snr":  # min(SNR, gamma) / SNR = min(1, gamma / SNR)
        return torch.clamp(gamma * b2 / a2, max=1.0)
    if kind == "soft-min-snr":  # gamma / (SNR + gamma)
        return gamma * b2 / (a2 + gamma * b2)
    if kind == "edm":  # 1 + 1 / (sigma_d^2 SNR): unbounded where alpha = 0 (pure noise)
        return 1.0 + b2 / (sigma_data**2 * a2)
    return torch.ones_like(a2)


def data_weight_by_beta2(kind: LossWeight, a2: Tensor, b2: Tensor, gamma: float, sigma_data: float) -> Tensor:
    """``w_z beta^2`` ``(B,)``: finite at both ends for every weighting."""
    if kind == "min-snr":
        return torch.minimum(a2, gamma * b2)
    if kind == "soft-min-snr":
        return gamma * a2 * b2 / (a2 + gamma * b2)
    if kind == "edm":
        return a2 + b2 / sigma_data**2
    raise ValueError(f"no data weight for loss_weight {kind!r}")


def time_weights(
    kind: LossWeight,
    target: Target,
    path: GaussianProbabilityPath,
    t: Tensor,
    gamma: float,
    sigma_data: float,
) -> Tensor:
    """The weight ``(B,)`` on each sample's squared error of ``target`` at times ``t (B,)``, as
    :mod:`this module's <flowkit_losses.weights>` docstring derives it (float64 inside)."""
    c = path.schedule.coefficients(t.double()).tensors(t.double())
    alpha, beta = cast(Tensor, c.alpha), cast(Tensor, c.beta)  # tensors() made every one a tensor
    a2, b2 = alpha * alpha, beta * beta
    if kind == "none":
        weight = torch.ones_like(a2)
    elif target == "noise":
        weight = noise_weight(kind, a2, b2, gamma, sigma_data)
    elif target == "score":
        weight = noise_weight(kind, a2, b2, gamma, sigma_data) * b2
    else:
        k = c.d_alpha * beta - alpha * c.d_beta
        weight = data_weight_by_beta2(kind, a2, b2, gamma, sigma_data) / (k * k)
    return weight.to(t.dtype)


def weighted_mean_squared(a: Tensor, b: Tensor, weight: Tensor) -> Tensor:
    """``mean_i weight_i mean_d (a - b)_{id}^2``: the per-sample squared error (mean over the event
    dims, as the unweighted losses) weighted by ``weight (B,)`` and averaged over the batch."""
    return ((a - b).square().flatten(1).mean(dim=1) * weight).mean()
