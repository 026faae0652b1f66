"""Weights & Biases: a W&B run in ``RUN_DIR/wandb/`` (``[wandb] enabled = true``), offline by default.

Logs ``train/loss`` and ``train/lr`` (and a loss's extra scalars) every ``[train] log_every`` steps,
the final metrics as ``metrics/<name>`` and in the run's summary, and the resolved pipeline as the run's
config. The W&B run id is kept in ``RUN_DIR/wandb-run-id``: ``flowkit resume`` continues the same W&B
run (``resume="allow"``); offline, each attempt is a folder ``wandb/offline-run-*-<id>`` and ``wandb
sync RUN_DIR/wandb/offline-run-*`` uploads them into that one run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from flowkit import hookimpl
from flowkit.params import param
from flowkit_trackers.common import (
    enabled_field,
    final_step,
    resolved_pipeline,
    scalars,
    store_id,
    stored_id,
)

if TYPE_CHECKING:
    from flowkit.interfaces import Run

#: The file of the run directory that keeps the W&B run id.
ID_FILE = "wandb-run-id"


@attrs.define(frozen=True)
class WandbSettings:
    """``[wandb]``: a Weights & Biases run, offline unless asked otherwise."""

    enabled: bool = enabled_field("wandb", "wandb")
    project: str = param("flowkit", doc="The W&B project.")
    mode: Literal["offline", "online"] = param(
        "offline", doc="offline: files only (upload later with `wandb sync`); online: upload as it runs."
    )


_runs: dict[str, Any] = {}


@hookimpl
def flowkit_register(registry: Any) -> None:
    registry.add_table("wandb", WandbSettings)


@hookimpl
def flowkit_run_start(run: Run) -> None:
    settings = run.table("wandb")
    if settings is None or not settings.enabled:
        return
    import wandb

    _finish(run)
    _, tables = resolved_pipeline(run)
    previous = stored_id(run, ID_FILE) if run.resumed_from is not None else None
    tracked = wandb.init(
        project=settings.project,
        dir=str(run.directory),
        mode=settings.mode,
        id=previous,
        resume="allow" if previous is not None else None,
        name=run.directory.name,
        config=tables,
        reinit="create_new",  # runs of one process (the Python API, tests) are separate W&B runs
        # console="off": W&B leaves stdout and stderr alone (the progress bars draw there).
        settings=wandb.Settings(silent=run.quiet, console="off"),
    )
    _runs[str(run.directory)] = tracked
    if previous is None:
        store_id(run.directory, ID_FILE, tracked.id)


@hookimpl
def flowkit_log(run: Run, step: int, metrics: dict[str, Any]) -> None:
    tracked = _runs.get(str(run.directory))
    if tracked is not None:
        tracked.log({f"train/{k}": v for k, v in scalars(metrics).items()}, step=step)


@hookimpl
def flowkit_run_end(run: Run, metrics: dict[str, Any]) -> None:
    tracked = _runs.get(str(run.directory))
    if tracked is None:
        return
    final = scalars(metrics)
    tracked.log({f"metrics/{k}": v for k, v in final.items()}, step=final_step(run))
    tracked.summary.update(final)
    _finish(run)


def _finish(run: Run) -> None:
    tracked = _runs.pop(str(run.directory), None)
    if tracked is not None:
        tracked.finish()
