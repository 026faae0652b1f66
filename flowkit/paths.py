"""The data side of the contract: datasets, schedules, probability paths, the fields on them (velocity
and score) and the distribution of training times. :mod:`flowkit.interfaces` re-exports every name;
read the conventions there.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor, nn

from flowkit.building import Component
from flowkit.errors import CapabilityError
from flowkit.records import Coefficients

# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


class Dataset(Component):
    """Samples of ``p_data``.

    ``shape`` is the event shape ``D`` of one sample. ``sample`` returns a fresh batch drawn with the
    given generator (datasets backed by files draw rows at random; synthetic ones generate on the
    device, so training needs no host round-trip per step).
    """

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, ...]:
        """Event shape ``D`` of one sample, e.g. ``(2,)``."""

    @abc.abstractmethod
    def sample(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Tensor:
        """Return ``n`` samples, shape ``(n, *D)``, float32, on ``device`` (default: CPU); categorical
        data (tokens) is int64 instead, and declares ``vocabulary``, the values a token takes. The
        engine writes samples and hands metrics and plots float32 either way (tokens stay exact)."""

    # Labelled data (conditional generation). A dataset with labels sets ``num_classes > 0`` and
    # implements ``sample_labelled``; the class indices are ``0 .. num_classes - 1``, and the index
    # ``num_classes`` is the null class (no condition) that conditional networks also accept.

    #: Number of classes of a labelled dataset; 0 for unlabelled data.
    num_classes: int = 0
    #: ``(low, high)`` bounds of the data's values (images: ``(-1.0, 1.0)``), ``None`` when unbounded;
    #: samples are clipped to them at the end of sampling, as image pipelines do.
    value_range: tuple[float, float] | None = None

    def sample_labelled(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x (n, *D) float32, y (n,) int64)``: ``n`` samples with their class labels, on ``device``."""
        raise CapabilityError(
            f"dataset '{self.registered_name}' has no labels; conditional training and guidance need "
            'a labelled dataset (e.g. kind = "digits", or kind = "images" with a labels array)'
        )

    def held_out(self) -> tuple[Tensor, Tensor | None] | None:
        """The held-out split ``(x (M, *D), y (M,) or None)`` on the CPU, or ``None`` when the dataset
        has none (synthetic data: every draw is fresh). Image metrics compare samples with it."""
        return None

    @property
    def provides_log_prob(self) -> bool:
        """Whether :meth:`log_prob` gives the exact density of ``p_data`` (an optional capability: a
        likelihood evaluation then also reports the exact value and the gap)."""
        return False

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p_data(x)`` for ``x (B, *D)``, shape ``(B,)``; only where :attr:`provides_log_prob`."""
        raise CapabilityError(f"dataset '{self.registered_name}' has no known density (log_prob)")


# ---------------------------------------------------------------------------------------------------
# Probability paths and schedules
# ---------------------------------------------------------------------------------------------------


class Schedule(Component):
    """``alpha_t`` and ``beta_t`` of a Gaussian path ``p_t(x|z) = N(alpha_t z, beta_t^2 I)``.

    Read a schedule through :meth:`coefficients` only (``schedule.coefficients(t)``, then
    ``.broadcast(like)`` or ``.tensors(t)``): the four methods are what a schedule implements, and a
    test refuses a call of them anywhere but the schedules themselves.

    All methods take ``t`` of shape ``(B,)`` and return shape ``(B,)``. ``t_range`` is the closed
    interval where every formula of the schedule is regular; a loss or sampler draws its times from
    it (e.g. VP keeps ``t <= 1 - 1e-5`` because ``beta_1 = 0``). ``prior_std`` is the standard
    deviation of ``p_init = N(0, prior_std^2 I)`` (``sigma_max`` for VE).
    """

    t_range: tuple[float, float] = (0.0, 1.0)
    prior_std: float = 1.0

    @abc.abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal coefficient ``alpha_t``, shape ``(B,)``."""

    @abc.abstractmethod
    def beta(self, t: Tensor) -> Tensor:
        """Noise coefficient ``beta_t``, shape ``(B,)``."""

    @abc.abstractmethod
    def d_alpha(self, t: Tensor) -> Tensor:
        """Time derivative ``alpha'_t``, shape ``(B,)``."""

    @abc.abstractmethod
    def d_beta(self, t: Tensor) -> Tensor:
        """Time derivative ``beta'_t``, shape ``(B,)``."""

    def coefficients(self, t: Tensor) -> Coefficients:
        """All four at ``t (B,)``: the one way to read a schedule. The training hot loop calls this
        once per step; a schedule may override it to share work or to return constants as floats
        (:meth:`Coefficients.tensors` makes them tensors). It must equal the four methods."""
        return Coefficients(self.alpha(t), self.beta(t), self.d_alpha(t), self.d_beta(t))


class ProbabilityPath(Component):
    """A conditional probability path ``p_t(x|z)`` with ``p_0(.|z) = p_init`` and ``p_1(.|z) ~ delta_z``.

    ``provides_score`` says whether ``target_score`` exists; ``converts_roles`` whether a score
    model and a vector field convert into each other (true for Gaussian paths). ``t_range`` is where
    the path's formulas are regular. A path that draws more randomness than ``noise`` (a second
    variable, a coupling) draws it from ``generator``, never from torch's global generator.
    """

    provides_score: ClassVar[bool] = False
    converts_roles: ClassVar[bool] = False
    #: Whether :meth:`project` constrains samples (a sphere, a simplex); simulators skip it otherwise.
    projects: ClassVar[bool] = False

    def project(self, x: Tensor) -> Tensor:
        """``x (B, *D)`` projected onto the set the path's samples live on; every simulator applies it
        after each step (fixed-step, adaptive and the diffusion samplers alike). Default: the identity,
        with :attr:`projects` ``False``. A path that projects sets ``projects = True``."""
        return x

    @property
    def t_range(self) -> tuple[float, float]:
        """Closed interval of times where ``sample`` and the targets are finite."""
        return (0.0, 1.0)

    @abc.abstractmethod
    def sample_prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        """Draw ``x_0 ~ p_init``; ``shape = (B, *D)``."""

    @abc.abstractmethod
    def sample(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``x ~ p_t(.|z)``; ``z`` is ``(B, *D)``, ``t`` is ``(B,)``.

        ``noise`` (shape of ``z``) fixes the Gaussian part of the draw (``x = alpha_t z + beta_t noise``
        for a Gaussian path); anything else is drawn from ``generator``.
        """

    @abc.abstractmethod
    def target_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """Conditional vector field ``u_t(x|z)``, shape ``(B, *D)``."""

    def sample_with_target(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x, u_t(x|z))`` with ``x ~ p_t(.|z)``; both ``(B, *D)``. What a flow-matching loss needs
        per step; a path may override it to compute both from one evaluation of its coefficients."""
        x = self.sample(z, t, noise, generator)
        return x, self.target_velocity(x, z, t)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log p_init(x)`` for ``x (B, *D)``, shape ``(B,)``: where a likelihood computed by the
        change of variables starts (its ``x`` is the noise end of the flow, ``t = t_range[0]``)."""
        raise CapabilityError(
            f"path '{self.registered_name}' has no log-density of its prior (prior_log_prob), so no "
            f'likelihood can be computed with it; use a path that has one (e.g. kind = "gaussian")'
        )

    def noise_is_prior(self) -> bool:
        """Whether the ``noise`` given to :meth:`sample` is ``x_0 ~ p_init`` itself, independent of ``z``.

        Only then does pairing ``noise`` with ``z`` by a :class:`Coupling` couple ``p_init`` with
        ``p_data`` (a loss refuses a coupling on any other path). Default ``False``.
        """
        return False

    @property
    def source(self) -> Dataset | None:
        """The dataset ``x_0`` is drawn from where the path's source is data, not noise (data to data);
        ``None`` (the default) for a path that starts from noise.

        Where it is set, :meth:`sample_prior` draws from it, and the training loop draws every batch's
        ``x_0`` by :meth:`sample_prior` from its ``noise`` stream and passes it to the loss as ``x0``,
        with or without a coupling: a loss that draws its own Gaussian noise (one whose call takes no
        ``x0``) is refused when the pipeline is built."""
        return None

    def target_score(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """Conditional score ``grad_x log p_t(x|z)``, shape ``(B, *D)``."""
        raise CapabilityError(
            f"path '{self.registered_name}' has no conditional score; use a loss that trains a "
            'velocity (e.g. kind = "cfm") or a path that provides a score (e.g. kind = "gaussian")'
        )

    def velocity_from_score(self, score: nn.Module) -> VectorField:
        """Wrap a score model as the vector field with the same marginals (Gaussian paths)."""
        raise CapabilityError(f"path '{self.registered_name}' cannot turn a score into a velocity")

    def score_from_velocity(self, velocity: nn.Module) -> ScoreModel:
        """Wrap a vector field as the score of the same marginal path (Gaussian paths)."""
        raise CapabilityError(f"path '{self.registered_name}' cannot turn a velocity into a score")


class GaussianProbabilityPath(ProbabilityPath):
    """A path ``p_t(x|z) = N(alpha_t z, beta_t^2 I)`` given by a :class:`Schedule`: the *noise form*.

    Losses and samplers that need ``beta_t`` (noise prediction, DPM-Solver) require this interface;
    its targets are computed from the drawn noise, never by dividing ``x - alpha_t z`` by a small
    ``beta_t``.
    """

    provides_score = True
    converts_roles = True
    schedule: Schedule

    @abc.abstractmethod
    def sample_with_noise(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x, noise)`` with ``x = alpha_t z + beta_t noise``; both ``(B, *D)``."""

    @abc.abstractmethod
    def target_velocity_from_noise(self, z: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``u_t(x|z) = alpha'_t z + beta'_t noise``; ``(B, *D)``."""

    @abc.abstractmethod
    def target_score_from_noise(self, noise: Tensor, t: Tensor) -> Tensor:
        """``grad log p_t(x|z) = -noise / beta_t``; ``(B, *D)``."""

    def data_from_velocity(self, x: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """The data prediction ``E[z | x_t = x]`` from the marginal velocity ``u_t(x)``; ``(B, *D)``.

        ``x_hat = (beta_t u - beta'_t x) / (alpha'_t beta_t - alpha_t beta'_t)`` (``docs/math.md``,
        "Faster samplers"): regular wherever the schedule is, also at ``alpha_t = 0``; the denominator
        has no cancellation (``alpha' >= 0 >= beta'``). What DPM-Solver++ and EDM's sampler integrate.
        """
        c = self.schedule.coefficients(t.to(dtype=x.dtype)).broadcast(x)
        numerator = velocity * c.beta - x * c.d_beta
        return numerator / (c.d_alpha * c.beta - c.alpha * c.d_beta)


# ---------------------------------------------------------------------------------------------------
# Models: networks and the roles they play
# ---------------------------------------------------------------------------------------------------


class VectorField(nn.Module, abc.ABC):
    """A velocity ``u_t(x)``: ``forward(x (B, *D), t (B,), **inputs) -> (B, *D)``.

    ``inputs`` are a network's extra inputs (:attr:`flowkit.interfaces.Network.inputs`, e.g. labels
    ``y``), by keyword: a role made from a network passes them on (``call_network``); a converted role
    forwards them to the field it is made from. Simulators call ``forward(x, t)``; guidance sets the
    labels."""

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor: ...


class ScoreModel(nn.Module, abc.ABC):
    """A score ``grad_x log p_t(x)``: ``forward(x (B, *D), t (B,), **inputs) -> (B, *D)`` (``inputs``
    as for :class:`VectorField`).

    A score converted from a vector field (through a Gaussian path) names that field in
    ``velocity_source`` and implements :meth:`from_velocity`, so dynamics that need both (the
    extension-trick SDE) evaluate the network once per step instead of twice.
    """

    @property
    def velocity_source(self) -> nn.Module | None:
        """The vector field this score is computed from, or ``None`` for a score in its own right."""
        return None

    def from_velocity(self, x: Tensor, t: Tensor, velocity: Tensor) -> Tensor:
        """The score at ``(x, t)`` given ``velocity = velocity_source(x, t)``; ``(B, *D)``."""
        raise CapabilityError(f"{type(self).__name__} is not computed from a vector field")

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor: ...


class NoisePredictor(ScoreModel):
    """A score parametrised by a noise prediction on a Gaussian path: ``s = -eps_theta(x, t) / beta_t``.

    ``predict_noise(x (B, *D), t (B,), **inputs) -> (B, *D)`` is what the network learns (a target of
    order 1 at every ``t``); ``forward`` is the score.
    """

    @abc.abstractmethod
    def predict_noise(self, x: Tensor, t: Tensor) -> Tensor:
        """The predicted noise ``eps_theta(x, t)``, ``(B, *D)``."""


class TimeDistribution(Component):
    """The distribution of training times: ``sample`` draws ``n`` times in ``[0, 1]``, which a loss maps
    affinely onto its path's ``t_range`` (``t = lo + (hi - lo) u``). Draws come from ``generator``."""

    @abc.abstractmethod
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``n`` times ``u`` in ``[0, 1]``, shape ``(n,)``, of ``dtype`` on ``device``."""
