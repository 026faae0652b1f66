"""The abstract interfaces of flowkit: with :mod:`flowkit.hookspecs`, the whole contract between the
core and its plugins. It imports no engine, config, registry or CLI module.

Conventions (``docs/math.md``):

* Time runs from noise to data: ``t = 0`` is the simple distribution ``p_init``, ``t = 1`` is ``p_data``.
  Score-SDE papers run the other way (``s = 1 - t``); plugins translate at their boundary.
* A batch of states ``x`` has shape ``(B, *D)``; ``D`` is the event shape of the data (``(2,)`` for 2D
  toy data, ``(C, H, W)`` for images). Times ``t`` have shape ``(B,)`` and broadcast over ``D``
  (:func:`per_sample`).
* ``z`` is a data point (the condition of a conditional path); ``eps ~ N(0, I)`` has the shape of ``x``.
* Every random draw a component makes comes from the ``torch.Generator`` it is given, so the same
  pipeline file and seed give the same run.

Every registered component derives from :class:`Component`. Its parameters are an attrs class,
``Params``, whose fields (type, default, validator, ``metadata={"doc": ...}``) are what a pipeline table
may set; the config loader validates a table against it, and the docs are generated from it. A kind's
interface is the base class a registered class must derive from (:data:`KINDS`).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, overload

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError

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


class Component(abc.ABC):
    """Base of every registered component.

    ``Params`` is the attrs class of the component's parameters. ``from_params`` builds an instance
    from validated parameters and the :class:`BuildContext` (what was built before it). The config
    loader sets ``registered_kind`` and ``registered_name`` on every instance it builds, so a resolved
    pipeline can be written back to TOML.
    """

    Params: ClassVar[type] = NoParams
    registered_kind: str | None = None
    registered_name: str | None = None

    def __init__(self, params: Any = None) -> None:
        super().__init__()
        self.params = params if params is not None else type(self).Params()

    @classmethod
    def from_params(cls, params: Any, context: BuildContext) -> Component:
        """Build the component from its validated ``params``. Override to use the ``context``."""
        return cls(params)


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
        """Return ``n`` samples, shape ``(n, *D)``, float32, on ``device`` (default: CPU)."""

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
        """All four at ``t (B,)``. The training hot loop calls this once per step; a schedule may
        override it to share work or to return constants as floats. It must equal the four methods."""
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
    """A velocity ``u_t(x)``: ``forward(x (B, *D), t (B,)) -> (B, *D)``."""

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor: ...


class ScoreModel(nn.Module, abc.ABC):
    """A score ``grad_x log p_t(x)``: ``forward(x (B, *D), t (B,)) -> (B, *D)``.

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

    ``predict_noise(x (B, *D), t (B,)) -> (B, *D)`` is what the network learns (a target of order 1 at
    every ``t``); ``forward`` is the score.
    """

    @abc.abstractmethod
    def predict_noise(self, x: Tensor, t: Tensor) -> Tensor:
        """The predicted noise ``eps_theta(x, t)``, ``(B, *D)``."""


class Model(Component, nn.Module):
    """What a pipeline's ``[model]`` table builds: a trainable network or an exact (analytic) model."""

    trainable: ClassVar[bool] = True


class Network(Model):
    """A trainable backbone ``forward(x (B, *D), t (B,)) -> (B, *D)``.

    A network predicts nothing in particular: the loss gives it a role (velocity or score) with
    :meth:`Loss.model_role`. ``from_params`` reads the data's event shape from ``context.data_shape``.

    A *conditional* network sets ``num_classes > 0`` and takes a third argument, ``forward(x, t, y)``
    with ``y (B,)`` int64 class labels, where ``y = num_classes`` is the null class (unconditional);
    ``forward(x, t)`` then means the null class. Unconditional networks keep ``forward(x, t)``: the
    roles and losses pass ``y`` only when there is one.
    """

    trainable = True
    #: Classes the network is conditioned on (0: unconditional); ``num_classes`` is the null label.
    num_classes: int = 0

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor: ...


class AnalyticModel(Model):
    """A model known in closed form (e.g. the Gaussian-mixture oracle): nothing to train."""

    trainable = False

    @abc.abstractmethod
    def roles(self) -> dict[str, nn.Module]:
        """The fields it provides: ``{"velocity": VectorField, "score": ScoreModel}`` (or a subset)."""


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


class Loss(Component):
    """A training objective. ``trains`` is the role the network learns (``"velocity"`` or ``"score"``)."""

    trains: ClassVar[Role]

    def check(self, path: ProbabilityPath) -> None:
        """Raise :class:`CapabilityError` when this loss cannot train on ``path``."""

    @abc.abstractmethod
    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        """Wrap ``network`` as the :class:`VectorField` or :class:`ScoreModel` this loss trains."""

    def roles(self, network: nn.Module, path: ProbabilityPath) -> dict[str, nn.Module]:
        """Every role the trained ``network`` plays: ``{trains: model_role(...)}`` by default. A loss
        that trains a velocity and a score at once (two heads) returns both."""
        return {self.trains: self.model_role(network, path)}

    @abc.abstractmethod
    def __call__(
        self, model: nn.Module, path: ProbabilityPath, z: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Scalar loss on a batch of data ``z (B, *D)``; draws ``t`` and ``x ~ p_t(.|z)`` itself, from
        ``generator``. ``model`` is what :meth:`model_role` returned.

        For labelled data the training loop calls it with a keyword ``y = labels (B,)`` (int64, the
        null class where dropped), which the loss passes on as ``model(x, t, y)``; a loss that takes
        no ``y`` keyword cannot train conditionally. Unlabelled data: no ``y`` is passed."""

    # A step in two stages, so that the training loop can pair the next batch while this one trains.

    def pairs_ahead(self) -> bool:
        """Whether a step is worth splitting into :meth:`prepare` (the draws), ``PreparedBatch.solve``
        (heavy work needing no generator, run by the training loop on a worker thread while the
        previous step trains) and :meth:`loss_on`. ``False`` (the default): the loop calls the loss
        as a whole and starts no thread."""
        return False

    def prepare(
        self,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> PreparedBatch:
        """Make this batch's draws from ``generator`` (on the training thread) and return them with
        the work left before the loss (see :class:`PreparedBatch`). Only where :meth:`pairs_ahead`."""
        raise CapabilityError(f"loss '{self.registered_name}' does not split a step (pairs_ahead)")

    def loss_on(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        batch: PreparedBatch,
        solution: Any,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The scalar loss of ``batch`` (from :meth:`prepare`) given ``solution = batch.solve()``; draws
        what it still needs from ``generator``. With one generator ``g`` for both,
        ``loss_on(model, path, b, b.solve(), g)`` for ``b = prepare(path, z, g)`` is ``self(model, path,
        z, g)``, bitwise."""
        raise CapabilityError(f"loss '{self.registered_name}' does not split a step (pairs_ahead)")


@attrs.frozen
class PreparedBatch:
    """A batch whose random draws are made and whose pairing is still to do (:meth:`Loss.prepare`).

    ``draws`` is what the loss drew (its own layout, read back by :meth:`Loss.loss_on`); ``solve()``
    is the rest of the pairing. ``solve`` may run on another thread while the training thread works
    on other tensors: it draws no random numbers, changes none of the draws and no state the
    training step reads, and returns the ``solution`` :meth:`Loss.loss_on` takes (a host solver
    that releases the GIL then runs beside the training step)."""

    draws: dict[str, Any]
    solve: Callable[[], Any]


class Coupling(Component):
    """Pairs a batch of noise with a batch of data: a coupling ``pi`` of ``p_init`` and ``p_data``.

    ``__call__(x0 (B, *D), x1 (B, *D), labels (B,) or None, generator)`` returns ``(x0, x1, labels)``
    with the same shapes, row ``i`` of each now a pair. Built-ins keep ``x1`` and ``labels`` in place
    and reorder (or resample) ``x0``, so the data marginal is exact. With ``labels`` (of the data), a
    coupling that honours them pairs each data point only with noise assigned to its class, so a
    class-conditional model sees unbiased noise for every class. Random choices (sampling from a
    plan) come from ``generator``. ``independent`` is ``True`` for the coupling that pairs as drawn.

    A coupling may split a call into :meth:`solve` (the deterministic, expensive part: draws nothing,
    thread-safe) and :meth:`pair` (applies the solution; any random choice). ``background = True``
    says that :meth:`solve` is worth running on a worker thread beside the training step (it
    releases the GIL for most of its time); a loss then pairs each batch a step ahead
    (:meth:`Loss.pairs_ahead`). The defaults do all the work in :meth:`pair` (``__call__``).
    """

    independent: ClassVar[bool] = False
    background: ClassVar[bool] = False

    def solve(self, x0: Tensor, x1: Tensor, labels: Tensor | None = None) -> Any:
        """The generator-free part of pairing ``x0 (B, *D)`` with ``x1 (B, *D)``: its result goes to
        :meth:`pair`. Must not change its inputs; may run on a worker thread. Default: nothing."""
        return None

    def pair(
        self,
        solution: Any,
        x0: Tensor,
        x1: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The pairs given ``solution = solve(x0, x1, labels)``: ``pair(solve(x0, x1, l), x0, x1, l, g)``
        is ``self(x0, x1, l, g)``. Default: ``self(x0, x1, labels, generator)``."""
        return self(x0, x1, labels, generator)

    @abc.abstractmethod
    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The pairs ``(x0, x1, labels)``: ``(B, *D)``, ``(B, *D)`` and ``(B,)`` (or ``None``)."""


# ---------------------------------------------------------------------------------------------------
# Dynamics and simulators
# ---------------------------------------------------------------------------------------------------


class ODE(Component):
    """``dX_t = drift(X_t, t) dt``. ``needs`` lists the roles it is built from (see BuildContext)."""

    needs: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift at ``x (B, *D)`` and ``t (B,)``, shape ``(B, *D)``."""


class ProbabilityFlowODE(ODE):
    """An ODE whose drift is the marginal velocity ``u_t`` of a Gaussian path: the probability-flow ODE.

    Samplers that work with the path's schedule rather than the drift alone (DPM-Solver++, EDM's Heun in
    ``sigma = beta / alpha``) need ``path`` (the :class:`GaussianProbabilityPath` the model's roles were
    converted through, ``None`` when the pipeline's path is not Gaussian) and :meth:`data_prediction`.
    """

    path: GaussianProbabilityPath | None = None

    def data_prediction(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[z | x_t = x]`` at ``x (B, *D)``, ``t (B,)``: one drift evaluation; ``(B, *D)``."""
        if self.path is None:
            raise CapabilityError(
                f"dynamics '{self.registered_name}' has no Gaussian path, so no data prediction; "
                f'use [path] kind = "gaussian"'
            )
        return self.path.data_from_velocity(x, self.drift(x, t), t)


class SDE(ODE):
    """``dX_t = drift(X_t, t) dt + diffusion(t) dW_t``."""

    @abc.abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``sigma_t``, shape ``(B,)`` (scalar noise scale per sample)."""


class TimeGrid(Component):
    """The times a simulator visits (or, for an adaptive one, reports its solution at)."""

    @abc.abstractmethod
    def __call__(self, steps: int, t_start: float, t_end: float) -> Tensor:
        """Increasing grid of ``steps + 1`` times from ``t_start`` to ``t_end``, shape ``(steps + 1,)``."""


class Simulator(Component):
    """An integrator of an :class:`ODE` or :class:`SDE`, fixed-step or adaptive.

    What it is, declared so the engine can plan before any work starts:

    * ``solves``: the dynamics class it integrates (``ODE`` or ``SDE``); see :meth:`check`.
    * ``adaptive``: ``False`` for a fixed-step simulator, which steps exactly between consecutive
      times of ``ts``; ``True`` for one that chooses its own steps (error control) and returns its
      solution at the times of ``ts``. The engine gives an adaptive simulator only the end points
      of the grid for sampling.
    * ``capturable``: whether :meth:`simulate` may be captured as a CUDA graph: fixed shapes, no host
      synchronisation, no data-dependent control flow. Adaptive step control is not capturable.

    ``last_nfe`` is the number of drift evaluations of the last call (per batch). Fixed-step
    simulators usually derive from :class:`flowkit.solvers.FixedStepSimulator`, which implements
    both methods from one ``step``.
    """

    solves: ClassVar[type] = ODE
    adaptive: ClassVar[bool] = False
    capturable: ClassVar[bool] = True
    last_nfe: int = 0

    def check(self, dynamics: ODE) -> None:
        """Raise :class:`CapabilityError` when this simulator cannot integrate ``dynamics``.

        An ODE simulator refuses an SDE (it would silently drop the noise), although ``SDE`` derives
        from ``ODE``; an SDE simulator accepts an ODE too (the noise-free case).
        """
        if not isinstance(dynamics, ODE):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates flowkit dynamics (an ODE or SDE "
                f"component), but got a {type(dynamics).__name__}; build the dynamics from the "
                f'[sample] table (e.g. dynamics = "flow")'
            )
        name = dynamics.registered_name or type(dynamics).__name__
        kind = "SDE" if isinstance(dynamics, SDE) else "ODE"
        if self.solves is ODE and isinstance(dynamics, SDE):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates an ODE, but dynamics '{name}' is an SDE; "
                f'choose a simulator for an SDE (e.g. "euler-maruyama") or ODE dynamics ("flow")'
            )
        if not isinstance(dynamics, self.solves) and not issubclass(self.solves, SDE):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates an {self.solves.__name__}, but dynamics "
                f"'{name}' is an {kind}; choose a simulator for an {kind} or other dynamics"
            )

    @abc.abstractmethod
    def simulate(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """Integrate from ``x (B, *D)`` at ``ts[0]`` to ``ts[-1]`` (``ts`` is ``(T + 1,)``, increasing);
        returns the final state ``(B, *D)``. Noise comes from ``generator``; ``progress(done, total)``
        is called as the integration advances. Sets ``last_nfe``."""

    @abc.abstractmethod
    def simulate_trajectory(
        self, dynamics: ODE, x: Tensor, ts: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Like :meth:`simulate`, returning the state at every time of ``ts``: ``(T + 1, B, *D)``."""


# ---------------------------------------------------------------------------------------------------
# Evaluation and devices
# ---------------------------------------------------------------------------------------------------


class Metric(Component):
    """A distance between two sample sets ``(N, *D)`` and ``(M, *D)``; lower is closer."""

    @abc.abstractmethod
    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        """Distance between the empirical distributions of ``samples`` and ``reference``."""

    def memory_bytes(self, n: int, m: int, dim: int) -> int:
        """Bytes of working memory for ``n`` vs ``m`` points of ``dim`` values (0: negligible); the
        engine refuses an ``[evaluate]`` whose need exceeds the device's memory."""
        return 0


class DeviceBackend(Component):
    """Where tensors live and how the hot loops run (device, precision, compilation).

    ``from_params`` raises a :class:`flowkit.errors.FlowkitError` when the device is not available, so
    a run fails before any work starts. The engine calls :meth:`prepare_module` on the model before
    training or sampling, and :meth:`compile_sampler` only for a simulator that is ``capturable``.
    """

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The torch device tensors and modules live on."""

    def generator(self, seed: int) -> torch.Generator:
        """A generator on this device seeded with ``seed``."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def prepare_module(self, module: nn.Module) -> nn.Module:
        """Move a module to the device and return the module to call (compiled, where asked). The
        returned module shares ``module``'s parameters."""
        return module.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Context for the forward pass of training (mixed precision, where enabled)."""
        return contextlib.nullcontext()

    @property
    def captures_samplers(self) -> bool:
        """Whether :meth:`compile_sampler` captures (so the engine reports progress once, at the end)."""
        return False

    def compile_sampler(self, fn: Callable[[Tensor], Tensor], example: Tensor) -> Callable[[Tensor], Tensor]:
        """Optionally capture a fixed-step sampler ``fn(x0) -> x1`` (e.g. as a CUDA graph)."""
        return fn

    def synchronize(self) -> None:
        """Wait for queued work (for timing)."""

    def memory_available(self) -> int | None:
        """Bytes of memory free for tensors on :attr:`device`, ``None`` when unknown. The engine
        refuses, at build time, batch and sample sizes whose estimated need exceeds it."""
        return None


# ---------------------------------------------------------------------------------------------------
# What components and plugins are given
# ---------------------------------------------------------------------------------------------------


@attrs.define
class BuildContext:
    """What a component's ``from_params`` may use: the components built before it.

    ``roles`` maps ``"velocity"``/``"score"`` to the modules that provide them (set once the model
    and loss are built).
    """

    source: str = "<pipeline>"
    device: DeviceBackend | None = None
    dataset: Dataset | None = None
    path: ProbabilityPath | None = None
    model: Model | None = None
    roles: dict[str, nn.Module] = attrs.Factory(dict)
    extra: dict[str, Any] = attrs.Factory(dict)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Event shape ``D`` of the data."""
        if self.dataset is None:
            raise CapabilityError("this component needs the data's shape, but no [data] was built")
        return tuple(self.dataset.shape)

    def role(self, name: str, needed_by: str) -> nn.Module:
        """The module playing ``name`` (``"velocity"`` or ``"score"``), converted through the path.

        Raises :class:`CapabilityError` naming ``needed_by`` when nothing provides it.
        """
        if name not in self.roles and self.path is not None and self.path.converts_roles:
            if name == "score" and "velocity" in self.roles:
                self.roles["score"] = self.path.score_from_velocity(self.roles["velocity"])
            elif name == "velocity" and "score" in self.roles:
                self.roles["velocity"] = self.path.velocity_from_score(self.roles["score"])
        if name in self.roles:
            return self.roles[name]
        have = ", ".join(sorted(self.roles)) or "nothing"
        path_name = self.path.registered_name if self.path is not None else "(none)"
        raise CapabilityError(
            f"{needed_by} needs a {name}, but the model provides {have} and path '{path_name}' "
            f"cannot convert between a score and a velocity; train the {name} (a loss that trains "
            f"a {name}) or use a Gaussian path"
        )


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


class Run(Protocol):
    """A pipeline being run: what every lifecycle and stage hook receives.

    ``table(name)`` is the validated content of a pipeline table (``"train"``, ``"sample"``, or a
    table a plugin declared with ``registry.add_table``) as its attrs instance, ``None`` when the
    pipeline has no such table (a plugin table with no key set gives its defaults).
    ``resumed_from`` is the training step a resumed run continues from (``flowkit resume``), ``None``
    for a fresh run: a reporter keeps what it wrote up to that step.
    """

    directory: Path
    quiet: bool
    metrics: dict[str, Any]
    resumed_from: int | None

    @property
    def source(self) -> str:
        """The pipeline file (or ``"<dict>"``)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def dataset(self) -> Dataset: ...

    @property
    def path(self) -> ProbabilityPath: ...

    @property
    def model(self) -> Model: ...

    def table(self, name: str) -> Any: ...

    def role(self, name: str, needed_by: str) -> nn.Module:
        """The model's velocity or score (converted through the path where needed)."""

    def sample_times(self) -> Tensor:
        """The sampler's time grid ``(T + 1,)`` on the run's device."""


class Registrar(Protocol):
    """What ``flowkit_register`` receives: adds components, kinds and config tables."""

    def add(self, kind: str, name: str, cls: type) -> None:
        """Register ``cls`` (derived from ``KINDS[kind]``) as the ``kind`` component ``name``."""

    def add_kind(self, kind: str, interface: type) -> None:
        """A new kind of component whose classes derive from ``interface``."""

    def add_table(self, name: str, params: type) -> None:
        """A pipeline table ``[name]`` validated against the attrs class ``params``."""


#: The kinds of component and the interface each registered class must derive from.
KINDS: dict[str, type] = {
    "dataset": Dataset,
    "path": ProbabilityPath,
    "schedule": Schedule,
    "model": Model,
    "loss": Loss,
    "coupling": Coupling,
    "dynamics": ODE,
    "simulator": Simulator,
    "timegrid": TimeGrid,
    "metric": Metric,
    "device": DeviceBackend,
}


def kind_of(interface: type) -> str | None:
    """The kind whose interface is ``interface`` or a base of it (``None`` if it is no component)."""
    for kind, base in KINDS.items():
        if isinstance(interface, type) and issubclass(interface, base):
            return kind
    return None
