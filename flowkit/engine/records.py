"""The records the engine passes around: :class:`Pipeline` (what a pipeline file built) and
:class:`PipelineRun` (a pipeline being run: the :class:`flowkit.interfaces.Run` every hook receives).

They sit below the code that uses them: this module imports no other engine module but the leaf ones
(the sections, the signal guard), so building, the stages and the orchestrator all import it and it
imports none of them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn

from flowkit.config import unstructure
from flowkit.engine.interrupts import SignalGuard
from flowkit.engine.sections import (
    TABLES,
    EvaluateSection,
    FlowkitSection,
    RunSection,
    SampleSection,
    TrainSection,
)
from flowkit.errors import FlowkitError, suggest
from flowkit.interfaces import ODE, BuildContext, Dataset, DeviceBackend, Loss, Model, ProbabilityPath
from flowkit.version import __version__

if TYPE_CHECKING:
    from flowkit.registry import PluginManager


@attrs.define
class Guidance:
    """A conditional model's ``[sample]`` dynamics, built once on its guided ``field``
    (:class:`flowkit.engine.guidance.GuidedField`): setting ``field.labels`` chooses the classes of
    the next simulation."""

    field: Any
    dynamics: ODE


@attrs.define
class Alongside:
    """The guide trained alongside the model (``[train] guide``): its ``model`` (whose state is saved),
    the ``network`` forward passes go through, its ``role`` (the field the loss trains), its training
    settings (``[train]`` with the guide's steps, rate and weight average) and whether it takes the
    labels (:mod:`flowkit.engine.alongside`)."""

    model: Model
    network: nn.Module
    role: nn.Module
    train: TrainSection
    takes_labels: bool


@attrs.define
class Pipeline:
    """Every built component and validated table of a pipeline.

    ``network`` is the module forward passes go through: ``model`` as the device backend prepared it
    (moved, and compiled where asked); it shares ``model``'s parameters, whose state is what is saved.
    ``tables`` holds the tables plugins declared (``[report]``, ...): validated, defaults filled in,
    ``None`` for one the pipeline file does not have.
    ``capture`` says whether the sampler runs as the backend's captured graph. ``guidance`` holds a
    conditional model's guided ``[sample]`` dynamics, built once with the pipeline (``None``:
    unconditional). ``manager`` is the plugin manager that built it: a run it opens as a teacher
    (:attr:`flowkit.interfaces.StageContext.open_run`) is built with the same plugins.
    """

    source: str
    run: RunSection
    dataset: Dataset
    path: ProbabilityPath
    model: Model
    network: nn.Module
    loss: Loss | None
    train: TrainSection | None
    sample: SampleSection
    evaluate: EvaluateSection
    tables: dict[str, Any]
    context: BuildContext
    capture: bool = False
    guidance: Guidance | None = None
    #: The guide trained alongside the model (``[train] guide``); ``None`` where there is none.
    alongside: Alongside | None = None
    #: The plugin manager it was built with (a teacher run it opens is built with the same plugins).
    manager: PluginManager | None = None

    @property
    def device(self) -> DeviceBackend:
        return self.run.device

    def table(self, name: str) -> Any:
        """The validated table ``name``: a section (``"train"``, ...) as its attrs instance, a component
        table (``"data"``, ``"path"``, ...) as its component, a plugin's table as its attrs instance;
        ``None`` when the pipeline has no such table (a plugin's table the file does not set, ``[loss]``
        and ``[train]`` of an exact model). A name that is no table at all is a :class:`FlowkitError`."""
        if name in self.tables:
            return self.tables[name]
        if name in TABLES:
            return getattr(self, {"data": "dataset"}.get(name, name), None)
        known = [*TABLES, *self.tables]
        raise FlowkitError(
            f"{self.source}: run.table({name!r}): no table [{name}] is known, neither one of flowkit's "
            f"nor one a plugin declared (registry.add_table).{suggest(name, known)} "
            f"Known tables: {', '.join(known)}"
        )

    def resolved(self, manager: PluginManager | None = None, command: str = "") -> dict[str, Any]:
        """The pipeline with every default filled in, as TOML-ready data, in :data:`TABLES` order."""
        plugins = (
            {}
            if manager is None
            else {p.name: f"{p.dist} {p.version}".strip() for p in manager.plugins.values()}
        )
        record = FlowkitSection(__version__, plugins, self.source, command)
        data: dict[str, Any] = {"flowkit": unstructure(record)}
        for table in TABLES:
            if table != "flowkit":
                value = getattr(self, {"data": "dataset"}.get(table, table))
                if value is not None:
                    data[table] = unstructure(value)
        data.update({name: unstructure(value) for name, value in self.tables.items() if value is not None})
        return data


def sample_times(pipeline: Pipeline, device: torch.device | None = None) -> Tensor:
    """The ``[sample]`` grid over the path's ``t_range``, ``(steps + 1,)``."""
    cfg = pipeline.sample
    t_start, t_end = pipeline.path.t_range
    return cfg.grid(cfg.steps, t_start, t_end).to(device if device is not None else pipeline.device.device)


@attrs.define
class PipelineRun:
    """A pipeline being run: the :class:`flowkit.interfaces.Run` that every hook receives."""

    pipeline: Pipeline
    directory: Path
    hook: Any
    quiet: bool = False
    metrics: dict[str, Any] = attrs.Factory(dict)
    #: The step a resumed run continues from (``None``: a run started afresh).
    resumed_from: int | None = None
    #: The SIGINT/SIGTERM handler of the run (training defers them to the end of a step).
    signals: SignalGuard | None = None
    #: The training state the train stage continues from (a checkpoint's ``TrainLoop.state_dict``):
    #: set by a resumed run, ``None`` for a fresh one.
    training_state: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        return self.pipeline.source

    @property
    def device(self) -> torch.device:
        return self.pipeline.device.device

    @property
    def dataset(self) -> Dataset:
        return self.pipeline.dataset

    @property
    def path(self) -> ProbabilityPath:
        return self.pipeline.path

    @property
    def model(self) -> Model:
        return self.pipeline.model

    def table(self, name: str) -> Any:
        """The validated table ``name`` (``"train"``, ``"report"``, ...), ``None`` when absent."""
        return self.pipeline.table(name)

    def role(self, name: str, needed_by: str) -> nn.Module:
        return self.pipeline.context.role(name, needed_by=needed_by)

    def sample_times(self) -> Tensor:
        return sample_times(self.pipeline)
