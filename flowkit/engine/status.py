"""The one writer of a run's ``status.json``: what state the run is in, and how to continue it.

The run and train stages ask this module to record a state (``running``, ``interrupted``,
``diverged``, ``failed``, ``done``); nothing else in flowkit calls :func:`~flowkit.engine.rundir.write_status`
(``tests/test_architecture.py`` checks it). Only rank 0 calls these under torchrun.
"""

from __future__ import annotations

from pathlib import Path

from flowkit.engine.checkpoints import list_checkpoints
from flowkit.engine.distributed import current_world, failure_message
from flowkit.engine.rundir import read_status, write_status
from flowkit.errors import FlowkitError


def resume_command(directory: Path) -> str:
    """The command that continues the run in ``directory``."""
    return f"flowkit resume {directory}"


def running(directory: Path, stage: str, step: int | None, checkpoint: str | None = None) -> None:
    """``running`` at ``stage`` after ``step``, with the command to continue it should the process be
    killed (``checkpoint``: the newest one, written at this step)."""
    write_status(
        directory, "running", stage=stage, step=step, checkpoint=checkpoint, resume=resume_command(directory)
    )


def stopped(
    directory: Path,
    state: str,
    stage: str,
    step: int | None,
    message: str,
    resume: str | None,
    checkpoint: str | None = None,
) -> None:
    """``interrupted`` or ``diverged``: where it stopped, why, and how to continue (``resume``)."""
    write_status(
        directory, state, stage=stage, step=step, checkpoint=checkpoint, message=message, resume=resume
    )


def done(directory: Path, step: int | None) -> None:
    """``done``: the run finished, trained to ``step`` (``None``: not trained)."""
    write_status(directory, "done", stage="done", step=step)


def failed(directory: Path, stage: str, exc: BaseException, trained_step: int | None) -> None:
    """``failed`` at ``stage`` with the error, unless the stage already recorded its state (``diverged``,
    ``interrupted``). A failed training continues from its newest checkpoint (none: start again)."""
    status = read_status(directory)
    if status is not None and status["state"] in ("diverged", "interrupted"):
        return
    message = str(exc) if isinstance(exc, FlowkitError) else f"{type(exc).__name__}: {exc}"
    if current_world().distributed:
        message = failure_message(exc, current_world())
    newest = list_checkpoints(directory)
    resume = resume_command(directory) if newest or stage != "train" else None
    step = newest[-1][0] if newest and stage == "train" else trained_step if stage != "train" else 0
    write_status(directory, "failed", stage=stage, step=step, message=message, resume=resume)
