"""The abstract interfaces of flowkit: the whole contract between the core and its plugins.

Conventions (``MATH.md``):

* Time runs from noise to data: ``t = 0`` is the simple distribution ``p_init``, ``t = 1`` is ``p_data``.
  Score-SDE papers run the other way (``s = 1 - t``); plugins translate at their boundary.
* A batch of states ``x`` has shape ``(B, *D)``; ``D`` is the event shape of the data (``(2,)`` for 2D
  toy data, ``(C, H, W)`` for images). Times ``t`` have shape ``(B,)`` and broadcast over ``D``.
* ``z`` is a data point (the condition of a conditional path); ``eps ~ N(0, I)`` has the shape of ``x``.

Every registered component derives from :class:`Component`. Its parameters are an attrs class,
``Params``, whose fields (type, default, validator, ``metadata={"doc": ...}``) are what a pipeline table
may set; the config loader validates a table against it, and the docs are generated from it. A kind's
interface is the base class a registered class must derive from (:data:`KINDS`).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError

Role = Literal["velocity", "score"]


@attrs.define(frozen=True)
class NoParams:
    """Parameters of a component that takes none."""


class Component(abc.ABC):
    """Base of every registered component.

    ``Params`` is the attrs class of the component's parameters. ``from_params`` builds an instance
    from validated parameters and the :class:`BuildContext` (what was built before it). The registry
    sets ``registered_kind`` and ``registered_name`` on every instance it builds, so a resolved
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

    def coefficients(self, t: Tensor) -> tuple[Tensor | float, ...]:
        """``(alpha_t, beta_t, alpha'_t, beta'_t)`` at once, each ``(B,)`` or a Python float where constant.

        The training hot loop calls this once per step; a schedule may override it to share work or to
        return constants as floats (which broadcast without allocating a tensor).
        """
        return self.alpha(t), self.beta(t), self.d_alpha(t), self.d_beta(t)


class ProbabilityPath(Component):
    """A conditional probability path ``p_t(x|z)`` with ``p_0(.|z) = p_init`` and ``p_1(.|z) ~ delta_z``.

    ``provides_score`` says whether ``target_score`` exists; ``converts_roles`` whether a score
    model and a vector field convert into each other (true for Gaussian paths, MATH.md).
    ``t_range`` is where the path's formulas are regular.
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

        ``noise`` (shape of ``z``) makes the draw deterministic: for a Gaussian path
        ``x = alpha_t z + beta_t noise``.
        """

    @abc.abstractmethod
    def target_velocity(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """Conditional vector field ``u_t(x|z)``, shape ``(B, *D)``."""

    def sample_with_target(
        self, z: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x, u_t(x|z))`` with ``x ~ p_t(.|z)``; both ``(B, *D)``.

        What a flow-matching loss needs per step. Paths override it to compute both from one evaluation
        of their coefficients (and, for a Gaussian path, the target from the noise: no division by a
        vanishing ``beta_t``).
        """
        x = self.sample(z, t, noise, generator)
        return x, self.target_velocity(x, z, t)

    def target_score(self, x: Tensor, z: Tensor, t: Tensor) -> Tensor:
        """Conditional score ``grad_x log p_t(x|z)``, shape ``(B, *D)``."""
        raise CapabilityError(
            f"path '{self.registered_name}' has no conditional score; use a loss that trains a "
            'velocity (e.g. kind = "cfm") or a path that provides a score (e.g. kind = "gaussian")'
        )

    def velocity_from_score(self, score: ScoreModel) -> VectorField:
        """Wrap a score model as the vector field with the same marginals (Gaussian paths)."""
        raise CapabilityError(f"path '{self.registered_name}' cannot turn a score into a velocity")

    def score_from_velocity(self, velocity: VectorField) -> ScoreModel:
        """Wrap a vector field as the score of the same marginal path (Gaussian paths)."""
        raise CapabilityError(f"path '{self.registered_name}' cannot turn a velocity into a score")


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


class Model(Component, nn.Module):
    """What a pipeline's ``[model]`` table builds: a trainable network or an exact (analytic) model."""

    trainable: ClassVar[bool] = True


class Network(Model):
    """A trainable backbone ``forward(x (B, *D), t (B,)) -> (B, *D)``.

    A network predicts nothing in particular: the loss gives it a role (velocity or score) with
    :meth:`Loss.model_role`. ``from_params`` reads the data's event shape from ``context.data_shape``.
    """

    trainable = True

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor: ...


class AnalyticModel(Model):
    """A model known in closed form (e.g. the Gaussian-mixture oracle): nothing to train.

    It provides its roles directly; a pipeline samples with it instead of a trained network.
    """

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
    def model_role(self, network: Network, path: ProbabilityPath) -> nn.Module:
        """Wrap ``network`` as the :class:`VectorField` or :class:`ScoreModel` this loss trains."""

    @abc.abstractmethod
    def __call__(
        self, model: nn.Module, path: ProbabilityPath, z: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Scalar loss on a batch of data ``z (B, *D)``; draws ``t`` and ``x ~ p_t(.|z)`` itself.

        ``model`` is what :meth:`model_role` returned.
        """


# ---------------------------------------------------------------------------------------------------
# Dynamics and simulators
# ---------------------------------------------------------------------------------------------------


class ODE(Component):
    """``dX_t = drift(X_t, t) dt``. ``needs`` lists the roles it is built from (see BuildContext)."""

    needs: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift at ``x (B, *D)`` and ``t (B,)``, shape ``(B, *D)``."""


class SDE(ODE):
    """``dX_t = drift(X_t, t) dt + diffusion(t) dW_t`` (an ODE has zero diffusion)."""

    @abc.abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``sigma_t``, shape ``(B,)`` (scalar noise scale per sample)."""


class TimeGrid(Component):
    """The times a fixed-step simulator visits."""

    @abc.abstractmethod
    def __call__(self, steps: int, t_start: float, t_end: float) -> Tensor:
        """Increasing grid of ``steps + 1`` times from ``t_start`` to ``t_end``, shape ``(steps + 1,)``."""


class _CountingDynamics:
    """Counts drift evaluations (one per batch) so a simulator reports its NFE.

    ``is_sde`` tells a simulator whether the wrapped dynamics has noise; ``diffusion`` is zero for an ODE.
    """

    def __init__(self, dynamics: ODE) -> None:
        self.dynamics = dynamics
        self.is_sde = isinstance(dynamics, SDE)
        self.registered_name = dynamics.registered_name
        self.count = 0

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        self.count += 1
        return self.dynamics.drift(x, t)

    def diffusion(self, t: Tensor) -> Tensor:
        if not self.is_sde:
            return torch.zeros_like(t)
        return self.dynamics.diffusion(t)  # type: ignore[attr-defined]


class Simulator(Component):
    """A fixed-step integrator of an :class:`ODE` or :class:`SDE`.

    ``solves`` is the dynamics class it integrates (``ODE`` for Euler and Heun, ``SDE`` for
    Euler–Maruyama). ``simulate`` and ``simulate_trajectory`` run ``step`` over a grid and record the
    number of function (drift) evaluations in ``last_nfe``.
    """

    solves: ClassVar[type] = ODE
    last_nfe: int = 0

    @abc.abstractmethod
    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from time ``t (B,)`` by ``h (B,)``; returns ``(B, *D)``."""

    def check(self, dynamics: ODE) -> None:
        """Raise :class:`CapabilityError` when this simulator cannot integrate ``dynamics``.

        An ODE simulator refuses an SDE (it would silently drop the noise), although ``SDE`` derives
        from ``ODE``.
        """
        name, kind = dynamics.registered_name, _dynamics_kind(dynamics)
        if self.solves is ODE and isinstance(dynamics, SDE):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates an ODE, but dynamics '{name}' is an SDE; "
                f'choose a simulator for an SDE (e.g. "euler-maruyama") or ODE dynamics ("flow")'
            )
        if not isinstance(dynamics, self.solves):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates an {self.solves.__name__}, but dynamics "
                f"'{name}' is an {kind}; choose a simulator for an {kind} or other dynamics"
            )

    def _run(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None,
        keep: bool,
        progress: Callable[[int, int], None] | None,
    ) -> tuple[Tensor, list[Tensor]]:
        self.check(dynamics)
        counting = _CountingDynamics(dynamics)
        ts = ts.to(device=x.device, dtype=x.dtype)
        states = [x] if keep else []
        batch, total = x.shape[0], ts.numel() - 1
        for i in range(total):
            t = ts[i].expand(batch)
            h = (ts[i + 1] - ts[i]).expand(batch)
            x = self.step(counting, x, t, h, generator)  # type: ignore[arg-type]
            if keep:
                states.append(x)
            if progress is not None:
                progress(i + 1, total)
        self.last_nfe = counting.count
        return x, states

    def simulate(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Integrate from ``x (B, *D)`` over the grid ``ts (T + 1,)``; returns the final ``(B, *D)``.

        ``progress(done, total)`` is called after every step.
        """
        return self._run(dynamics, x, ts, generator, keep=False, progress=progress)[0]

    def simulate_trajectory(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Like :meth:`simulate`, returning every visited state: shape ``(T + 1, B, *D)``."""
        return torch.stack(self._run(dynamics, x, ts, generator, keep=True, progress=progress)[1])


def _dynamics_kind(dynamics: ODE) -> str:
    return "SDE" if isinstance(dynamics, SDE) else "ODE"


# ---------------------------------------------------------------------------------------------------
# Evaluation and devices
# ---------------------------------------------------------------------------------------------------


class Metric(Component):
    """A distance between two sample sets ``(N, *D)`` and ``(M, *D)``; lower is closer."""

    @abc.abstractmethod
    def __call__(self, samples: Tensor, reference: Tensor) -> float:
        """Distance between the empirical distributions of ``samples`` and ``reference``."""


class DeviceBackend(Component):
    """Where tensors live and how the hot loops run (device, precision, compilation).

    ``from_params`` raises a :class:`flowkit.errors.FlowkitError` when the device is not available, so
    a run fails before any work starts.
    """

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The torch device tensors and modules live on."""

    def generator(self, seed: int) -> torch.Generator:
        """A generator on this device seeded with ``seed``."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def prepare_module(self, module: nn.Module) -> nn.Module:
        """Move a module to the device (and compile it, where the backend is asked to)."""
        return module.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Context for the forward pass of training (mixed precision, where enabled)."""
        return contextlib.nullcontext()

    def compile_sampler(self, fn: Callable[[Tensor], Tensor], example: Tensor) -> Callable[[Tensor], Tensor]:
        """Optionally capture a fixed-step sampler ``fn(x0) -> x1`` (e.g. as a CUDA graph)."""
        return fn

    def synchronize(self) -> None:
        """Wait for queued work (for timing)."""


# ---------------------------------------------------------------------------------------------------
# Build context
# ---------------------------------------------------------------------------------------------------


@attrs.define
class BuildContext:
    """What a component's ``from_params`` may use: the components built before it.

    The pipeline builds in this order: device, data, path, model, loss, dynamics, simulator, metric.
    ``roles`` maps ``"velocity"``/``"score"`` to the modules that provide them.
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
        if name in self.roles:
            return self.roles[name]
        path = self.path
        if path is not None and path.converts_roles:
            if name == "score" and "velocity" in self.roles:
                self.roles["score"] = path.score_from_velocity(self.roles["velocity"])  # type: ignore
                return self.roles["score"]
            if name == "velocity" and "score" in self.roles:
                self.roles["velocity"] = path.velocity_from_score(self.roles["score"])  # type: ignore
                return self.roles["velocity"]
        have = ", ".join(sorted(self.roles)) or "nothing"
        path_name = path.registered_name if path is not None else "(none)"
        raise CapabilityError(
            f"{needed_by} needs a {name}, but the model provides {have} and path '{path_name}' "
            f"cannot convert between a score and a velocity; train the {name} (a loss that trains "
            f"a {name}) or use a Gaussian path"
        )


#: The kinds of component and the interface each registered class must derive from.
KINDS: dict[str, type] = {
    "dataset": Dataset,
    "path": ProbabilityPath,
    "schedule": Schedule,
    "model": Model,
    "loss": Loss,
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


def iter_kinds() -> Iterator[tuple[str, type]]:
    """``(kind, interface)`` pairs in pipeline order."""
    return iter(KINDS.items())
