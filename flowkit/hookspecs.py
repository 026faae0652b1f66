"""The plugin contract: pluggy hook specifications.

A plugin is a module (or object) with functions marked ``@flowkit.hookimpl`` whose names match the
specifications below. Plugins are found through the ``flowkit`` entry-point group and loaded when a
:class:`flowkit.registry.PluginManager` is created — never at import time.

Registration goes through one hook, :func:`flowkit_register`, that receives a typed registry, so a
new kind of component never needs a new hook::

    from flowkit import hookimpl

    @hookimpl
    def flowkit_register(registry):
        registry.add("schedule", "linear", LinearSchedule)

The lifecycle hooks let plugins (reporters, loggers) act on a run without the pipeline knowing them.
Each receives the :class:`flowkit.pipeline.Run` (its config, run directory, components and the
``quiet`` flag) first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import Tensor

    from flowkit.pipeline import Run
    from flowkit.registry import ComponentRegistry

PROJECT = "flowkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def flowkit_register(registry: ComponentRegistry) -> None:
    """Register this plugin's components: ``registry.add(kind, name, cls)``.

    ``kind`` is one of :data:`flowkit.interfaces.KINDS` (or one added by ``registry.add_kind``);
    ``cls`` must derive from that kind's interface and implement all its abstract methods.
    """


@hookspec
def flowkit_run_start(run: Run) -> None:
    """A run is about to train: components are built and the run directory exists."""


@hookspec
def flowkit_train_step(run: Run, step: int, loss: Tensor) -> None:
    """Training step ``step`` (1-based) finished with ``loss``, a detached scalar tensor.

    Called every step: keep it cheap. ``loss.item()`` waits for the device, so call it rarely
    (``flowkit_log`` carries the loss as a float every ``train.log_every`` steps).
    """


@hookspec
def flowkit_log(run: Run, step: int, metrics: dict[str, Any]) -> None:
    """Periodic scalars (every ``train.log_every`` steps and at the end of each stage)."""


@hookspec
def flowkit_checkpoint(run: Run, step: int, path: str) -> None:
    """A checkpoint (model weights) was written to ``path``."""


@hookspec
def flowkit_sampling_progress(run: Run, done: int, total: int) -> None:
    """Sampling advanced: ``done`` of ``total`` simulator steps are complete."""


@hookspec
def flowkit_stage(run: Run, stage: str, state: str) -> None:
    """A stage (``"train"``, ``"sample"``, ``"evaluate"``) changes ``state`` (``"start"`` or ``"end"``)."""


@hookspec
def flowkit_samples_ready(run: Run, samples: Tensor, reference: Tensor, trajectory: Tensor | None) -> None:
    """Samples ``(N, *D)`` exist, with held-out data ``(M, *D)`` and a short trajectory
    ``(T + 1, K, *D)`` of the first ``K`` samples (``None`` when not recorded)."""


@hookspec
def flowkit_run_end(run: Run, metrics: dict[str, Any]) -> None:
    """The run finished; ``metrics`` is what ``metrics.json`` holds."""
