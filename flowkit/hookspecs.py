"""The plugin contract: pluggy hook specifications.

A plugin is a module (or object) with functions marked ``@flowkit.hookimpl`` whose names match the
specifications below. Plugins are found through the ``flowkit`` entry-point group and loaded when a
:class:`flowkit.registry.PluginManager` is created — never at import time. Importing this module loads
pluggy only.

Three groups of hooks:

* **Registration**, one hook, :func:`flowkit_register`, that receives a typed registrar, so a new kind
  of component never needs a new hook::

      from flowkit import hookimpl

      @hookimpl
      def flowkit_register(registry):
          registry.add("schedule", "linear", LinearSchedule)
          registry.add_table("my_reporter", MyReporterSettings)   # a validated [my_reporter] table

* **Lifecycle** hooks let plugins (reporters, loggers) act on a run without the engine knowing them.
  Each receives the :class:`flowkit.interfaces.Run` first.
* **Stages** (``firstresult``): the first implementation that returns something other than ``None``
  does the stage instead of the engine (``tryfirst``/``trylast`` order them); the engine runs its own
  when every implementation returns ``None``. :func:`flowkit_evaluate_metrics` adds metrics to the
  built-in evaluation instead of replacing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import Tensor

    from flowkit.interfaces import Registrar, Run, Samples

PROJECT = "flowkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration --------------------------------------------------------------------------------------


@hookspec
def flowkit_register(registry: Registrar) -> None:
    """Register this plugin's components, kinds and tables.

    ``registry.add(kind, name, cls)``: ``kind`` is one of :data:`flowkit.interfaces.KINDS` (or one added
    by ``registry.add_kind``); ``cls`` must derive from that kind's interface and implement all its
    abstract methods. ``registry.add_table(name, params)``: a pipeline table ``[name]`` validated
    against the attrs class ``params``; a run gives it as ``run.table(name)``.
    """


# --- lifecycle -----------------------------------------------------------------------------------------


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
    """Sampling advanced: ``done`` of ``total`` units (simulator steps, or thousandths of the time
    span for an adaptive simulator) are complete."""


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


# --- stages --------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def flowkit_train(run: Run) -> bool | None:
    """Train the model in place of the engine; return ``True`` when done (``None``: not taken).

    The weights sampling should use must be in ``run.model`` afterwards, and ``model.pt`` written.
    """


@hookspec(firstresult=True)
def flowkit_sample(run: Run) -> Samples | None:
    """Draw the run's samples in place of the engine (and write ``samples.npy``); ``None``: not taken."""


@hookspec(firstresult=True)
def flowkit_evaluate(run: Run, samples: Samples) -> dict[str, Any] | None:
    """Evaluate in place of the engine, filling ``run.metrics``; return them (``None``: not taken)."""


@hookspec
def flowkit_evaluate_metrics(run: Run, samples: Samples, reference: Tensor) -> dict[str, Any] | None:
    """Extra metrics for ``metrics.json`` from the built-in evaluation (likelihood, image metrics):
    ``reference`` is the held-out data ``(M, *D)``. A key already set is an error."""
