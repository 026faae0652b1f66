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

This module is where to start reading, and it holds the models, losses, couplings and metrics; the
rest of the contract lives in modules below it, each re-exported here (import every name
from ``flowkit.interfaces``):

* :mod:`flowkit.paths`: datasets, schedules, probability paths, the velocity and score fields, and the
  distribution of training times (:class:`TimeDistribution`, the kind ``time``);
* :mod:`flowkit.dynamics`: dynamics (ODE, SDE), time grids and simulators;
* :mod:`flowkit.guiders`: guidance at sampling time (:class:`Guider`, the kind ``guider``);
* :mod:`flowkit.devices`: the device backend (:class:`DeviceBackend`);
* :mod:`flowkit.building`: the :class:`Component` base and role conversion;
* :mod:`flowkit.records`: plain records (:class:`Coefficients`, :class:`Samples`, ...).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs
import torch
from torch import Tensor, nn

from flowkit.building import Component, convert_role
from flowkit.devices import DeviceBackend
from flowkit.dynamics import ODE, SDE, ProbabilityFlowODE, Simulator, TimeGrid, check_pair
from flowkit.errors import CapabilityError
from flowkit.guiders import ALONGSIDE, Guider, GuiderParams, ScaleParams, classifier_free
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
    LossValue,
    NoParams,
    Progress,
    Registrar,
    Role,
    Samples,
    StageContext,
    TrainedRun,
    per_sample,
    resolve_relative,
    stage_seed,
)

__all__ = [
    "ALONGSIDE",
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
    "Guider",
    "GuiderParams",
    "Loss",
    "LossValue",
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
    "ScaleParams",
    "Schedule",
    "ScoreModel",
    "Simulator",
    "StageContext",
    "TimeDistribution",
    "TimeGrid",
    "TrainedRun",
    "VectorField",
    "call_network",
    "check_pair",
    "classifier_free",
    "kind_of",
    "network_inputs",
    "per_sample",
    "resolve_relative",
    "stage_seed",
]


# ---------------------------------------------------------------------------------------------------
# Models: networks and the roles they play
# ---------------------------------------------------------------------------------------------------


class Model(Component, nn.Module):
    """What a pipeline's ``[model]`` table builds: a trainable network or an exact (analytic) model."""

    trainable: ClassVar[bool] = True


class Network(Model):
    """A trainable backbone ``forward(x (B, *D), t (B,), **inputs) -> (B, *output_shape)``.

    A network predicts nothing in particular: the loss gives it a role (velocity or score) with
    :meth:`Loss.model_role`. ``from_params`` reads the data's event shape from ``context.data_shape``
    and the shape of what it predicts per sample from ``context.output_shape`` (the loss's
    :meth:`Loss.output_shape`: the data's shape for a velocity or a score, ``(*D, K)`` for logits).

    :attr:`inputs` names the extra inputs the network takes beside ``x`` and ``t``, each a tensor with
    a leading batch dimension ``B`` passed **by keyword**: ``("y",)`` for a class-conditional network
    (``y (B,)`` int64 labels, ``y = num_classes`` the null class), ``("r",)`` for a second time,
    ``("r", "y")`` for both. Whoever calls a network (a loss, a role, guidance) goes through
    :func:`call_network`, which passes exactly the declared inputs and refuses, naming the network
    and the input, one that is missing or not declared. ``forward`` adds each declared input as a
    keyword parameter: ``def forward(self, x, t, y: Tensor | None = None)`` (a default keeps the
    signature compatible with this one for a type checker).
    """

    trainable = True
    #: The extra inputs ``forward`` takes by keyword. A class attribute; a network whose inputs
    #: depend on its parameters (``mlp`` and ``unet`` take ``y`` only on labelled data) sets it on the
    #: instance in ``__init__``, before it is called.
    inputs: tuple[str, ...] = ()
    #: Classes the network is conditioned on (0: unconditional); ``num_classes`` is the null label.
    num_classes: int = 0

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor: ...


def network_inputs(network: nn.Module) -> tuple[str, ...]:
    """The extra inputs the :class:`Network` behind ``network`` declares (:attr:`Network.inputs`);
    ``()`` for a module that is no network."""
    inner = _unwrapped(network)
    return () if inner is None else tuple(inner.inputs)


def call_network(network: nn.Module, x: Tensor, t: Tensor, **inputs: Tensor | None) -> Tensor:
    """``network(x, t, **declared)``: the ``inputs`` that are not ``None``, by keyword, which must be
    exactly those ``network`` declares (:func:`network_inputs`).

    Raises :class:`CapabilityError` naming the network and the input: one it declares that no value
    is given for, or one given that it does not declare."""
    declared = network_inputs(network)
    given = {name: value for name, value in inputs.items() if value is not None}
    if not declared and not given:  # the common case, kept lean for the training hot loop
        return network(x, t)
    if given.keys() == set(declared):
        return network(x, t, **given)
    inner = _unwrapped(network)
    found = inner if inner is not None else network
    name = getattr(found, "registered_name", None) or type(found).__name__
    missing = [k for k in declared if k not in given]
    if missing:
        raise CapabilityError(
            f"network '{name}' declares input '{missing[0]}' (inputs: {', '.join(declared)}), but its "
            f"caller gives none; pass it by keyword, e.g. call_network(network, x, t, {missing[0]}=...)"
        )
    extra = next(k for k in given if k not in declared)
    raise CapabilityError(
        f"network '{name}' does not take input '{extra}' (it declares "
        f"{', '.join(declared) or 'no extra inputs'}); declare it in the network's inputs or do not pass it"
    )


def _unwrapped(network: nn.Module) -> Network | None:
    """The :class:`Network` behind ``network``, seen through the wrappers torch puts around a module
    and keeps as a submodule (``DistributedDataParallel``'s ``module``, ``torch.compile``'s
    ``_orig_mod``): the engine may hand a loss the wrapped network. ``None`` when there is none."""
    inner: object = network
    while isinstance(inner, nn.Module) and not isinstance(inner, Network):
        inner = inner._modules.get("module") or inner._modules.get("_orig_mod")
    return inner if isinstance(inner, Network) else None


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
    """A training objective. ``trains`` is the role the network learns (``"velocity"``, ``"score"``, or
    ``"posterior"``: the log-probabilities ``log p_{1|t}(. | x_t)`` of a discrete path's tokens).

    ``forward_mode_ad = True`` says the loss differentiates the model forward (``torch.func.jvp``):
    the engine then gives it the role around the plain network even under torchrun (DDP's wrapper
    does not support forward-mode AD) and averages the gradients over the ranks itself after the
    backward pass, so a step on ``W`` ranks is still the step of one process on the whole batch.
    """

    trains: ClassVar[Role]
    forward_mode_ad: ClassVar[bool] = False

    def check(self, path: ProbabilityPath) -> None:
        """Raise :class:`CapabilityError` when this loss cannot train on ``path``."""

    def output_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of what the network predicts per sample, for data of event shape ``data_shape``:
        the data's shape (a velocity, a score, a noise: the default), or e.g. ``(*D, K)`` for the
        logits of ``K`` categories per coordinate. The engine builds the loss before the model and
        gives a network this shape as ``context.output_shape``."""
        return tuple(data_shape)

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
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor | LossValue:
        """Scalar loss on a batch of data ``z (B, *D)``; draws ``t`` and ``x ~ p_t(.|z)`` itself, from
        ``generator``. ``model`` is what :meth:`model_role` returned, around the network, or around
        ``DistributedDataParallel(network)`` under torchrun (the plain network where
        :attr:`forward_mode_ad`). A :class:`LossValue` instead of a tensor reports extra scalars.

        ``y (B,)``: the labels of labelled data (int64, the null class where dropped), given by the
        training loop only to a conditional model; the loss passes them on by keyword,
        ``model(x, t, y=y)``. ``None``: unlabelled data, or an unconditional model.

        Where the loss declares a :attr:`coupling`, the loop also passes ``x0 (B, *D)``: the noise
        already paired with ``z`` (row ``i`` of each a pair), which the loss uses in place of noise of
        its own; without a coupling no ``x0`` is passed."""


class Coupling(Component):
    """Pairs a batch of noise with a batch of data: a coupling ``pi`` of ``p_init`` and ``p_data``.

    ``__call__(x0 (B, *D), x1 (B, *D), y (B,) or None, generator)`` returns ``(x0, x1, y)`` with the
    same shapes, row ``i`` of each now a pair. Built-ins keep ``x1`` and its labels ``y`` in place
    and reorder (or resample) ``x0``, so the data marginal is exact. With labels ``y`` (of the data), a
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
    #: Whether :meth:`solve`, :meth:`pair` and ``__call__`` also take the source's labels ``y0 (B,)``
    #: by keyword (a path whose source is a labelled dataset, beside labelled data): the coupling then
    #: pairs each data point only with source points of its class. The training loop passes ``y0``
    #: (and the data's labels as ``y``) only to a coupling that says so.
    matches_source_labels: ClassVar[bool] = False

    def solve(self, x0: Tensor, x1: Tensor, y: Tensor | None = None) -> Any:
        """The generator-free part of pairing ``x0 (B, *D)`` with ``x1 (B, *D)``: its result goes to
        :meth:`pair`. Must not change its inputs; may run on a worker thread. Default: nothing."""
        return None

    def pair(
        self,
        solution: Any,
        x0: Tensor,
        x1: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The pairs given ``solution = solve(x0, x1, y)``: ``pair(solve(x0, x1, y), x0, x1, y, g)``
        is ``self(x0, x1, y, g)``. Default: ``self(x0, x1, y, generator)``."""
        return self(x0, x1, y, generator)

    @abc.abstractmethod
    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The pairs ``(x0, x1, y)``: ``(B, *D)``, ``(B, *D)`` and ``(B,)`` (or ``None``)."""


# ---------------------------------------------------------------------------------------------------
# Evaluation
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


# ---------------------------------------------------------------------------------------------------
# What components and plugins are given
# ---------------------------------------------------------------------------------------------------


@attrs.define
class BuildContext:
    """What a component's ``from_params`` may use: the components built before it.

    ``roles`` maps ``"velocity"``/``"score"`` to the modules that provide them (set once the model
    and loss are built). ``loss`` is the pipeline's loss, built before the model (``None`` for an
    untrained model), so that a network can read :attr:`output_shape`.
    """

    source: str = "<pipeline>"
    device: DeviceBackend | None = None
    dataset: Dataset | None = None
    path: ProbabilityPath | None = None
    model: Model | None = None
    loss: Loss | None = None
    roles: dict[str, nn.Module] = attrs.Factory(dict)
    extra: dict[str, Any] = attrs.Factory(dict)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Event shape ``D`` of the data."""
        if self.dataset is None:
            raise CapabilityError("this component needs the data's shape, but no [data] was built")
        return tuple(self.dataset.shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of what the network predicts per sample: the loss's :meth:`Loss.output_shape` of the
        data's shape, or the data's shape where there is no loss."""
        shape = self.data_shape
        return shape if self.loss is None else tuple(self.loss.output_shape(shape))

    def role(self, name: str, needed_by: str) -> nn.Module:
        """The module playing ``name`` (``"velocity"`` or ``"score"``), converted through the path.

        Raises :class:`CapabilityError` naming ``needed_by`` when nothing provides it.
        """
        return convert_role(self.roles, self.path, name, needed_by)


class Run(Protocol):
    """A pipeline being run: what every lifecycle and stage hook receives.

    ``table(name)`` is the validated content of a pipeline table (``"train"``, ``"sample"``, or a
    table a plugin declared with ``registry.add_table``) as its attrs instance, ``None`` when the
    pipeline file has no such table: a plugin falls back to its own defaults explicitly
    (``run.table("mine") or MySettings()``). A name that is no table at all (neither flowkit's nor
    declared by a plugin) raises :class:`flowkit.errors.FlowkitError` naming it.
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
    "guider": Guider,
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
    LossValue, StageContext, ProbabilityPath, GaussianProbabilityPath, VectorField, ScoreModel,
    NoisePredictor, ODE, ProbabilityFlowODE, SDE, TimeGrid, Simulator, TimeDistribution, DeviceBackend,
    Guider, TrainedRun,
):  # fmt: skip
    _public.__module__ = __name__
