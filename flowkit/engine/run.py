"""Orchestration: train -> sample -> evaluate, with the lifecycle hooks, in a run directory.

Each stage is a hook (pluggy ``firstresult``): ``flowkit_train``, ``flowkit_sample`` and
``flowkit_evaluate``. The engine's own stages are ordinary ``trylast`` implementations of them
(:mod:`~flowkit.engine.train`, :mod:`~flowkit.engine.sample`, :mod:`~flowkit.engine.evaluate`,
registered by the registry as flowkit's own plugins), so a plugin that returns a result first does the
stage instead, and this module calls hooks only — and, as each stage starts, the components' ``setup``
(:func:`~flowkit.engine.components.set_up`), whoever does the stage.

:func:`run_pipeline` starts a run in a new directory (:mod:`~flowkit.engine.resume` continues one).
The run's ``status.json`` is kept true at every moment through :mod:`~flowkit.engine.status`.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Iterator
from typing import Any

from flowkit.engine import status
from flowkit.engine.checkpoints import list_checkpoints
from flowkit.engine.components import set_up
from flowkit.engine.distributed import current_world, from_main, leave_together
from flowkit.engine.interrupts import Interrupted, SignalGuard, signal_name
from flowkit.engine.lock import hold_run
from flowkit.engine.manifest import write_resolved
from flowkit.engine.records import Pipeline, PipelineRun
from flowkit.engine.rundir import run_directory, write_json
from flowkit.interfaces import Samples
from flowkit.registry import PluginManager


def run_pipeline(
    pipeline: Pipeline,
    manager: PluginManager,
    out: str | None = None,
    quiet: bool = False,
    command: str | None = None,
) -> PipelineRun:
    """Train (if the model is trainable), sample and evaluate; write the run directory.

    The directory holds ``pipeline.toml`` (resolved, with versions and seed), ``status.json``,
    ``checkpoint-*.pt`` (training state), ``model.pt`` (weights only), ``samples.npy``,
    ``metrics.json`` and what the reporter plugins write (plots, logs).
    """
    world = current_world()
    # Rank 0 claims the directory and tells the others (under torchrun only rank 0 writes there).
    directory = from_main(lambda: run_directory(pipeline.run.out, pipeline.source, out), world)
    if not world.is_main:
        return execute_worker(PipelineRun(pipeline, directory, WorkerHooks(manager.hook), quiet=True))
    run = PipelineRun(pipeline, directory, manager.hook, quiet=quiet)
    command = command if command is not None else command_line()
    with hold_run(directory, command):  # until the run ends: no resume or sample meanwhile
        write_resolved(directory / "pipeline.toml", pipeline.resolved(manager, command))
        status.running(directory, "train" if pipeline.model.trainable else "sample", 0)
        return execute(run)


def command_line() -> str:
    """The command that started this process, as ``flowkit ...``."""
    return shlex.join(["flowkit", *sys.argv[1:]])


def execute(run: PipelineRun, trained: bool = False) -> PipelineRun:
    """The stages of ``run`` with its status kept: training (continuing ``run.training_state`` where
    resumed; skipped when ``trained``), sampling and evaluation, then ``metrics.json`` and ``done``."""
    hook, pipeline = run.hook, run.pipeline
    stage = "start"
    with SignalGuard() as guard:
        run.signals = guard
        try:
            hook.flowkit_run_start(run=run)
            if pipeline.model.trainable and not trained:
                stage = "train"
                with _stage(run, "train"):
                    hook.flowkit_train(run=run)
            leave_together()  # under torchrun: every rank leaves the group here, then rank 0 samples alone
            stage = "sample"
            status.running(run.directory, "sample", _trained_step(run))
            with _stage(run, "sample"):
                result: Samples = hook.flowkit_sample(run=run)
            stage = "evaluate"
            with _stage(run, "evaluate"):
                hook.flowkit_evaluate(run=run, samples=result)
            run.metrics["world_size"] = current_world().size
            write_json(run.directory / "metrics.json", run.metrics)  # after the stage: with its timing
            status.done(run.directory, _trained_step(run))
            hook.flowkit_run_end(run=run, metrics=run.metrics)
        except Interrupted as exc:
            if exc.recorded:  # the training loop wrote its checkpoint, status and message
                raise
            raise _interrupted_outside_steps(run, stage, exc) from None
        except BaseException as exc:
            # before the first stage (a reporter refusing its log): nothing new was trained
            step = run.resumed_from if stage == "start" else _trained_step(run)
            status.failed(run.directory, stage, exc, step)
            raise
        finally:
            run.signals = None
    return run


class WorkerHooks:
    """The hooks a rank other than 0 calls under torchrun: ``flowkit_train`` only (a plugin that trains
    in its own way must do so on every rank). Reporters and the other lifecycle and stage hooks run on
    rank 0 alone, so one run writes one log, one progress bar and one set of plots."""

    def __init__(self, hook: Any) -> None:
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        if name == "flowkit_train":
            return self._hook.flowkit_train
        return _no_hook


def _no_hook(**kwargs: Any) -> None:
    return None


def execute_worker(run: PipelineRun, trained: bool = False) -> PipelineRun:
    """A rank other than 0: its share of training, nothing written. Sampling and evaluation are rank
    0's alone (they are cheap next to training, and their draws then do not depend on the number of
    processes), so this rank ends when training does, after leaving the process group together with
    the others (rank 0 leaves it before sampling)."""
    with SignalGuard() as guard:
        run.signals = guard
        try:
            if run.pipeline.model.trainable and not trained:
                set_up(run.pipeline, "train", run.directory)
                run.hook.flowkit_train(run=run)
            leave_together()
        finally:
            run.signals = None
    return run


def _trained_step(run: PipelineRun) -> int | None:
    train_cfg = run.pipeline.train
    return train_cfg.steps if train_cfg is not None and run.pipeline.model.trainable else None


def _interrupted_outside_steps(run: PipelineRun, stage: str, exc: Interrupted) -> Interrupted:
    """A signal outside the training steps: before the first (nothing trained: start again), or while
    sampling or evaluating (the weights stay: sample again)."""
    resume = status.resume_command(run.directory)
    name = signal_name(exc.signum)
    weights = run.directory / "model.pt"
    if stage in ("start", "train") and run.pipeline.model.trainable and not weights.is_file():
        step = run.resumed_from or 0
        newest = list_checkpoints(run.directory)
        if newest and newest[-1][0] > step:  # trained by a stage that did not say so (a plugin's)
            step, path = newest[-1]
            message = (
                f"{run.source}: interrupted by {name} while training; the newest checkpoint is {path} "
                f"(step {step}). Continue with: {resume}"
            )
        else:  # true only now: no checkpoint is newer than where this run (re)started
            message = (
                f"{run.source}: interrupted by {name} before training step {step + 1}; nothing new was "
                f"trained. Continue with: {resume}"
            )
        status.stopped(run.directory, "interrupted", "train", step, message, resume)
        return Interrupted(message, exc.signum, recorded=True)
    where = "evaluating" if stage == "evaluate" else "sampling"
    kept = f"the trained weights are in {weights}; " if run.pipeline.model.trainable else ""
    message = (
        f"{run.source}: interrupted by {name} while {where}; {kept}"
        f"sample and evaluate again with: {resume} (or `flowkit sample {run.directory}` for samples only)"
    )
    status.stopped(run.directory, "interrupted", "sample", _trained_step(run), message, resume)
    return Interrupted(message, exc.signum, recorded=True)


@contextlib.contextmanager
def _stage(run: PipelineRun, name: str) -> Iterator[None]:
    """The stage ``name``: its hooks at the start and end, its components set up, its time."""
    run.hook.flowkit_stage(run=run, stage=name, state="start")
    started = time.perf_counter()
    try:
        set_up(run.pipeline, name, run.directory)
        yield
        run.pipeline.device.synchronize()
        run.metrics[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
    finally:  # reporters close what they opened (progress bars) even when the stage fails
        run.hook.flowkit_stage(run=run, stage=name, state="end")
