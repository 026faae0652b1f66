"""What the losses share: time sampling, network roles, and the Gaussian-path protocol.

A :class:`~flowkit.interfaces.GaussianProbabilityPath` is used in its *noise form*: the targets are
computed from the drawn noise (``target_velocity_from_noise``, ``target_score_from_noise``), never by
dividing ``x - alpha_t z`` by a small ``beta_t``. Any other path is used through the interface's
``sample`` / ``target_velocity`` / ``target_score``.
"""

from __future__ import annotations

import abc
from typing import Any, Literal

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    Coupling,
    GaussianProbabilityPath,
    Loss,
    NoisePredictor,
    ProbabilityPath,
    ScoreModel,
    TimeDistribution,
    VectorField,
    call_network,
)
from flowkit.params import component, param
from flowkit_losses.times import LogitNormalTime, UniformTime
from flowkit_losses.weights import WEIGHTS, LossWeight

TSampling = Literal["uniform", "logit-normal"]


def time_field() -> TimeDistribution:
    return component(
        "uniform",
        doc="Distribution of the training times on the path's t_range (kind time: uniform, logit-normal).",
    )


def t_sampling_field() -> TSampling:
    return param(
        "uniform",
        doc="Older spelling of time: 'logit-normal' means time = { kind = \"logit-normal\" } with "
        "logit_mean and logit_std.",
        validator=attrs.validators.in_(["uniform", "logit-normal"]),
    )


def logit_mean_field() -> float:
    return param(0.0, doc="Older spelling of time's mean (t_sampling = 'logit-normal').")


def logit_std_field() -> float:
    return param(
        1.0,
        doc="Older spelling of time's std (t_sampling = 'logit-normal').",
        validator=attrs.validators.gt(0.0),
    )


def loss_weight_field() -> LossWeight:
    return param(
        "none",
        doc="Weighting of the squared error over time (Gaussian paths): none, min-snr (Hang et al. 2023), "
        "soft-min-snr (Crowson et al. 2024), edm (Karras et al. 2022); docs/math.md, 'Loss weightings'.",
        validator=attrs.validators.in_(WEIGHTS),
    )


def snr_gamma_field() -> float:
    return param(
        5.0,
        doc="gamma of min-snr and soft-min-snr: the signal-to-noise ratio at which the data error's "
        "weight is capped.",
        validator=attrs.validators.gt(0.0),
    )


def sigma_data_field() -> float:
    return param(
        0.5,
        doc="sigma_data of edm: the data's standard deviation (EDM: 0.5).",
        validator=attrs.validators.gt(0.0),
    )


def check_loss_weight(params: Any, loss: str, path: ProbabilityPath) -> None:
    """Refuse a weighting other than ``none`` on a path without Gaussian coefficients."""
    if params.loss_weight != "none" and not isinstance(path, GaussianProbabilityPath):
        raise CapabilityError(
            f"loss '{loss}' with loss_weight = \"{params.loss_weight}\" weights by the signal-to-noise ratio "
            f"of a Gaussian path, but path '{path.display_name}' is not one; use loss_weight = \"none\" "
            'or [path] kind = "gaussian"'
        )


def time_distribution(params: Any, loss: str) -> TimeDistribution:
    """The time distribution a loss's ``params`` ask for: ``time``, or the older ``t_sampling``
    (with ``logit_mean``, ``logit_std``) where that asks for logit-normal times. A loss built outside a
    pipeline holds the default's spec ``"uniform"``, not a built component."""
    chosen = params.time
    if params.t_sampling == "logit-normal":
        if isinstance(chosen, TimeDistribution) and not isinstance(chosen, UniformTime):
            raise CapabilityError(
                f"loss '{loss}' sets both time (kind '{chosen.registered_name}') and t_sampling = "
                f"'logit-normal'; keep one: time = {{ kind = \"logit-normal\", mean = "
                f"{params.logit_mean}, std = {params.logit_std} }}"
            )
        return LogitNormalTime(LogitNormalTime.Params(mean=params.logit_mean, std=params.logit_std))
    if isinstance(chosen, TimeDistribution):
        return chosen
    if chosen == "uniform":
        return UniformTime()
    raise TypeError(f"time must be a built TimeDistribution component or 'uniform', got {chosen!r}")


class TimeSampledLoss(Loss):
    """A loss that draws ``t`` (by ``params.time``) and ``eps``, then calls :meth:`loss_at`.

    Subclasses' ``Params`` have ``time`` and the older ``t_sampling``, ``logit_mean``, ``logit_std``.
    """

    def sample_times(
        self,
        n: int,
        path: ProbabilityPath,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` training times on ``path.t_range``, shape ``(n,)``: ``u`` drawn from the time
        distribution, mapped to ``lo + (hi - lo) u``."""
        lo, hi = path.t_range
        times = time_distribution(self.params, self.display_name)
        unit = times.sample(n, generator, device or torch.device("cpu"), dtype)
        return lo + (hi - lo) * unit

    def __call__(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss on data ``z (B, *D)`` (with labels ``y (B,)`` for a conditional model); draws
        ``t (B,)`` then ``eps (B, *D)`` from ``generator``."""
        t = self.sample_times(z.shape[0], path, generator, z.device, z.dtype)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return self.loss_at(model, path, z, t, noise, generator, y=y)

    @abc.abstractmethod
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
        """The loss at given times ``t (B,)`` and noise ``(B, *D)``; a scalar. Deterministic for a
        Gaussian path; a path with more randomness draws it from ``generator``. ``y (B,)``: the labels
        of a conditional model (passed only when there are labels)."""


def active_coupling(coupling: object) -> Coupling | None:
    """The coupling a loss applies, or ``None`` for the independent one. A loss built outside a
    pipeline (``CFMLoss()``) holds the default's spec ``"independent"``, not a built component."""
    if isinstance(coupling, Coupling) and not coupling.independent:
        return coupling
    if coupling in (None, "independent") or isinstance(coupling, Coupling):
        return None
    raise TypeError(f"coupling must be a built Coupling component or 'independent', got {coupling!r}")


def mean_squared(a: Tensor, b: Tensor) -> Tensor:
    """Mean of ``(a - b)^2`` over the batch and the event dims: ``||a - b||^2 / prod(D)`` averaged over
    the batch, so the loss scale (and a good learning rate) does not depend on the data dimension."""
    return torch.nn.functional.mse_loss(a, b)  # one fused node forward and backward


def call_model(model: nn.Module, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
    """A role ``model`` (what :meth:`Loss.model_role` returned) at ``(x, t)``, given the labels
    ``y (B,)`` by keyword where there are some (the role passes them on to its network)."""
    return model(x, t) if y is None else model(x, t, y=y)


class NetworkVelocity(VectorField):
    """A network playing the velocity: ``forward(x (B, *D), t (B,), **inputs) = network(x, t, **inputs)``
    (the network's declared inputs, by keyword: :func:`flowkit.interfaces.call_network`)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        return call_network(self.network, x, t, **inputs)


class NetworkScore(ScoreModel):
    """A network playing the score directly: ``forward(x (B, *D), t (B,), **inputs)
    = network(x, t, **inputs)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        return call_network(self.network, x, t, **inputs)


class NoisePredictionScore(NoisePredictor):
    """A network predicting the noise ``eps``, seen as a score: ``s(x, t) = -network(c_t x, t) / beta_t``.

    ``x``: ``(B, *D)``, ``t``: ``(B,)``. The network's target is ``eps``, of order 1 at every ``t``;
    the division by ``beta_t`` happens only when the score itself is asked for. Its input is scaled by
    ``c_t = 1 / sqrt(alpha_t^2 + beta_t^2)`` (EDM's ``c_in``), the inverse standard deviation of
    ``x_t`` for data of unit variance: a no-op for variance-preserving schedules, and for VE it keeps
    the input of order 1 where ``x_t`` has the prior's scale (``sigma_max = 50``), which an MLP
    cannot otherwise resolve.
    """

    def __init__(self, network: nn.Module, path: GaussianProbabilityPath) -> None:
        super().__init__()
        self.network = network
        self.path = path

    def predict_noise(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        """The network's noise prediction, ``(B, *D)`` (given its declared ``inputs``, e.g. labels ``y``)."""
        c = self.path.schedule.coefficients(t.to(x.dtype)).broadcast(x)
        variance = c.alpha * c.alpha + c.beta * c.beta
        scale = torch.rsqrt(variance) if isinstance(variance, Tensor) else variance**-0.5
        return call_network(self.network, x * scale, t, **inputs)

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        return self.path.target_score_from_noise(self.predict_noise(x, t, **inputs), t)
