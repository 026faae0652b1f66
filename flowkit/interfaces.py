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

This module is where to start reading, and it holds the models, losses, couplings, metrics and device
backends; the rest of the contract lives in modules below it, each re-exported here (import every name
from ``flowkit.interfaces``):

* :mod:`flowkit.paths`: datasets, schedules, probability paths, the velocity and score fields, and the
  distribution of training times (:class:`TimeDistribution`, the kind ``time``);
* :mod:`flowkit.dynamics`: dynamics (ODE, SDE), time grids and simulators;
* :mod:`flowkit.building`: the :class:`Component` base and role conversion;
* :mod:`flowkit.records`: plain records (:class:`Coefficients`, :class:`Samples`, ...).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs
import torch
from torch import Tensor, nn

from flowkit.building import Component, convert_role
from flowkit.dynamics import ODE, SDE, ProbabilityFlowODE, Simulator, TimeGrid, check_pair
from flowkit.errors import CapabilityError
from flowkit.paths import (
    Dataset,
    GaussianProbabilityPath,
    NoisePredictor,
    ProbabilityPath,
    Schedule,
    ScoreModel,
    TimeDistribution,
    VectorField,
)
from flowkit.records import (
    Coefficients,
    NoParams,
    Progress,
    Registrar,
    Role,
    Samples,
    per_sample,
)

__all__ = [
    "KINDS",
    "ODE",
    "SDE",
    "AnalyticModel",
    "BuildContext",
    "Coefficients",
    "Component",
    "Coupling",
    "Dataset",
    "DeviceBackend",
    "GaussianProbabilityPath",
    "Loss",
    "Metric",
    "Model",
    "Network",
    "NoParams",
    "NoisePredictor",
    "ProbabilityFlowODE",
    "ProbabilityPath",
    "Progress",
    "Registrar",
    "Role",
    "Run",
    "Samples",
    "Schedule",
    "ScoreModel",
    "Simulator",
    "TimeDistribution",
    "TimeGrid",
    "VectorField",
    "check_pair",
    "kind_of",
    "per_sample",
]


# ---------------------------------------------------------------------------------------------------
# Models: networks and the roles they play
# ---------------------------------------------------------------------------------------------------


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

    @property
    def coupling(self) -> Coupling | None:
        """The coupling the training loop pairs each batch's noise with its data by, before it calls
        the loss (``None``, the default: the loss draws its own noise). The loop draws ``x0 ~ p_init``
        with the path's ``sample_prior``, pairs it by the coupling (its ``solve`` a step ahead on a
        worker thread where ``background``) and passes the pairs as ``z`` and ``x0``; how long the
        pairing takes is the loop's concern, never the loss's."""
        return None

    @abc.abstractmethod
    def __call__(
        self, model: nn.Module, path: ProbabilityPath, z: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Scalar loss on a batch of data ``z (B, *D)``; draws ``t`` and ``x ~ p_t(.|z)`` itself, from
        ``generator``. ``model`` is what :meth:`model_role` returned.

        For labelled data the training loop calls it with a keyword ``y = labels (B,)`` (int64, the
        null class where dropped), which the loss passes on as ``model(x, t, y)``; a loss that takes
        no ``y`` keyword cannot train conditionally. Unlabelled data: no ``y`` is passed.

        Where the loss declares a :attr:`coupling`, the loop also passes ``x0 (B, *D)``: the noise
        already paired with ``z`` (row ``i`` of each a pair), which the loss uses in place of noise of
        its own; without a coupling no ``x0`` is passed."""


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
    releases the GIL for most of its time); the training loop then solves each batch a step ahead
    (:attr:`Loss.coupling`). The defaults do all the work in :meth:`pair` (``__call__``).
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
        return convert_role(self.roles, self.path, name, needed_by)


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
    "time": TimeDistribution,
    "metric": Metric,
    "device": DeviceBackend,
}


def kind_of(interface: type) -> str | None:
    """The kind whose interface is ``interface`` or a base of it (``None`` if it is no component)."""
    for kind, base in KINDS.items():
        if isinstance(interface, type) and issubclass(interface, base):
            return kind
    return None


# The kinds and records defined in the modules below are public here: errors, the docs and reprs name
# them by the path a plugin imports them from (``flowkit.interfaces.Schedule``).
for _public in (
    Component, NoParams, Coefficients, Samples, Registrar, Dataset, Schedule,
    ProbabilityPath, GaussianProbabilityPath, VectorField, ScoreModel, NoisePredictor, ODE,
    ProbabilityFlowODE, SDE, TimeGrid, Simulator, TimeDistribution,
):  # fmt: skip
    _public.__module__ = __name__
