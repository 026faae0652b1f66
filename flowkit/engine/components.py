"""Every built component of a pipeline, and their set-up when a stage starts.

:func:`set_up` calls :meth:`flowkit.interfaces.Component.setup` on each component a pipeline built —
the device backend, the dataset, the path and its schedule, the model, the loss and what it holds
(coupling, time distribution), the sampling simulator, dynamics and grid (and the guided dynamics of
a conditional model), the metric, the likelihood's components, and any component in a plugin's
table — with the run's seed, device and directory. The stages call it when they start (a run, and
``flowkit sample`` / ``evaluate`` / ``likelihood`` on a finished one); building a pipeline never does,
so ``flowkit validate`` runs no set-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from flowkit.engine.records import Pipeline
from flowkit.interfaces import Component, StageContext


def components(pipeline: Pipeline) -> list[Component]:
    """Every component of ``pipeline``, each once, in table order (nested ones after their owner)."""
    roots: list[Any] = [
        pipeline.run,
        pipeline.dataset,
        pipeline.path,
        pipeline.model,
        pipeline.loss,
        pipeline.train,
        pipeline.sample,
        pipeline.guidance.dynamics if pipeline.guidance is not None else None,
        pipeline.evaluate,
        *pipeline.tables.values(),
    ]
    seen: set[int] = set()
    found: list[Component] = []
    for root in roots:
        for component in _walk(root, seen):
            found.append(component)
    return found


def _walk(value: Any, seen: set[int]) -> Iterator[Component]:
    """The components in ``value``: itself, and those in its parameters (attrs fields, lists, dicts)."""
    if value is None or id(value) in seen:
        return
    if isinstance(value, Component):
        seen.add(id(value))
        yield value
        yield from _walk(value.params, seen)
    elif attrs.has(type(value)):
        seen.add(id(value))
        for field in attrs.fields(type(value)):
            yield from _walk(getattr(value, field.name), seen)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item, seen)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item, seen)


def stage_context(pipeline: Pipeline, stage: str, directory: Path | None = None) -> StageContext:
    """What the components' ``setup`` receives for ``stage`` of ``pipeline``."""
    backend = pipeline.device
    return StageContext(
        stage=stage,
        seed=pipeline.run.seed,
        device=backend.device,
        directory=directory,
        source=pipeline.source,
        make_generator=backend.generator,
        open_run=_open_run(backend.device, pipeline.manager),
    )


def _open_run(device: Any, manager: Any) -> Any:
    """``StageContext.open_run``: a finished run opened on ``device`` and built with ``manager``, the
    plugins of the pipeline that opens it (imported when first called, so that a stage without a
    teacher loads none of it)."""

    def open_run(directory: Path) -> Any:
        from flowkit.engine.teacher import open_teacher

        return open_teacher(Path(directory), device, set_up, manager)

    return open_run


def set_up(pipeline: Pipeline, stage: str, directory: Path | None = None) -> None:
    """Call ``setup`` on every component of ``pipeline`` as ``stage`` starts (:func:`components`)."""
    context = stage_context(pipeline, stage, directory)
    for component in components(pipeline):
        component.setup(context)
