"""TensorBoard: event files in ``RUN_DIR/tensorboard/`` (``[tensorboard] enabled = true``).

Scalars ``train/loss`` and ``train/lr`` (and a loss's extra scalars, ``train/<name>``) every
``[train] log_every`` steps, ``metrics/<name>`` at the last step, and the resolved pipeline as the
text ``pipeline``. A resumed run writes a new event file into the same folder, starting with a
``purge_step`` at the step it continues from, so TensorBoard hides what the stopped run logged after
its checkpoint and shows each step once (``tensorboard --logdir RUN_DIR/tensorboard``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from flowkit import hookimpl
from flowkit_trackers.common import enabled_field, final_step, resolved_pipeline, scalars

if TYPE_CHECKING:
    from flowkit.interfaces import Run

#: The folder of the run directory the event files go to.
FOLDER = "tensorboard"


@attrs.define(frozen=True)
class TensorBoardSettings:
    """``[tensorboard]``: TensorBoard event files in the run directory."""

    enabled: bool = enabled_field("tensorboard", "tensorboard")


# The open writer of each run (by its directory).
_writers: dict[str, Any] = {}


def _enabled(run: Run) -> bool:
    found = run.table("tensorboard")
    return found is not None and found.enabled


@hookimpl
def flowkit_register(registry: Any) -> None:
    registry.add_table("tensorboard", TensorBoardSettings)


@hookimpl
def flowkit_run_start(run: Run) -> None:
    if not _enabled(run):
        return
    from torch.utils.tensorboard import SummaryWriter

    _close(run)
    start = run.resumed_from or 0
    # purge_step: events of this folder at steps >= start + 1 (logged after the checkpoint this run
    # continues from, by the run that was stopped) are hidden, so each step is shown once.
    purge = start + 1 if run.resumed_from is not None else None
    writer = SummaryWriter(log_dir=str(run.directory / FOLDER), purge_step=purge)
    _writers[str(run.directory)] = writer
    text, _ = resolved_pipeline(run)
    writer.add_text("pipeline", "```toml\n" + text + "\n```", global_step=start)
    writer.flush()


@hookimpl
def flowkit_log(run: Run, step: int, metrics: dict[str, Any]) -> None:
    writer = _writers.get(str(run.directory))
    if writer is None:
        return
    for name, value in scalars(metrics).items():
        writer.add_scalar(f"train/{name}", value, global_step=step)
    writer.flush()  # a killed run keeps what it logged


@hookimpl
def flowkit_run_end(run: Run, metrics: dict[str, Any]) -> None:
    writer = _writers.get(str(run.directory))
    if writer is None:
        return
    step = final_step(run)
    for name, value in scalars(metrics).items():
        writer.add_scalar(f"metrics/{name}", value, global_step=step)
    _close(run)


def _close(run: Run) -> None:
    writer = _writers.pop(str(run.directory), None)
    if writer is not None:
        writer.close()
