"""Orchestration: train -> sample -> evaluate, with the lifecycle hooks, in a run directory.

Each stage is a hook that plugins may take over (pluggy ``firstresult``): ``flowkit_train``,
``flowkit_sample`` and ``flowkit_evaluate``. The engine runs its own implementation when no plugin
returns a result, so replacing a stage (distributed training, guided sampling) never edits the engine.

:func:`run_pipeline` starts a run in a new directory; :func:`resume_run` continues one that was
interrupted, killed or diverged from its newest valid checkpoint (or extends a finished one into a new
directory). Both keep the run's ``status.json`` true at every moment.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from flowkit.config import read_toml
from flowkit.engine.build import Pipeline, build_pipeline
from flowkit.engine.checkpoints import list_checkpoints, newest_checkpoint, save_state
from flowkit.engine.distributed import current_world, failure_message, from_main, leave_together
from flowkit.engine.evaluate import evaluate
from flowkit.engine.interrupts import Interrupted, SignalGuard, signal_name
from flowkit.engine.rundir import read_status, run_directory, write_json, write_status, write_toml
from flowkit.engine.sample import sample, sample_times
from flowkit.engine.train import TrainLoop, train
from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import Dataset, Model, ProbabilityPath, Samples
from flowkit.registry import PluginManager


@attrs.define
class PipelineRun:
    """A pipeline being run: the :class:`flowkit.interfaces.Run` that every hook receives."""

    pipeline: Pipeline
    directory: Path
    hook: Any
    quiet: bool = False
    metrics: dict[str, Any] = attrs.Factory(dict)
    resumed_from: int | None = None
    #: The SIGINT/SIGTERM handler of the run (training defers them to the end of a step).
    signals: SignalGuard | None = None

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
        return _execute_worker(PipelineRun(pipeline, directory, WorkerHooks(manager.hook), quiet=True))
    run = PipelineRun(pipeline, directory, manager.hook, quiet=quiet)
    command = command if command is not None else _command_line()
    write_toml(directory / "pipeline.toml", pipeline.resolved(manager, command))
    stage = "train" if pipeline.model.trainable else "sample"
    write_status(directory, "running", stage=stage, step=0, resume=f"flowkit resume {directory}")
    return _execute(run)


def _command_line() -> str:
    return shlex.join(["flowkit", *sys.argv[1:]])


def _execute(run: PipelineRun, loop: TrainLoop | None = None, trained: bool = False) -> PipelineRun:
    """The stages of ``run`` with its status kept: training (from ``loop`` where resumed; skipped when
    ``trained``), sampling and evaluation, then ``metrics.json`` and ``done``."""
    hook, pipeline = run.hook, run.pipeline
    stage = "start"
    with SignalGuard() as guard:
        run.signals = guard
        try:
            hook.flowkit_run_start(run=run)
            if pipeline.model.trainable and not trained:
                stage = "train"
                with _stage(run, "train"):
                    if hook.flowkit_train(run=run) is None:
                        train(run, loop)
            leave_together()  # under torchrun: every rank leaves the group here, then rank 0 samples alone
            stage = "sample"
            write_status(
                run.directory,
                "running",
                stage="sample",
                step=_trained_step(run),
                resume=f"flowkit resume {run.directory}",
            )
            with _stage(run, "sample"):
                result: Samples | None = hook.flowkit_sample(run=run)
                if result is None:
                    result = sample(run)
            stage = "evaluate"
            with _stage(run, "evaluate"):
                if hook.flowkit_evaluate(run=run, samples=result) is None:
                    evaluate(run, result)
            run.metrics["world_size"] = current_world().size
            write_json(run.directory / "metrics.json", run.metrics)  # after the stage: with its timing
            write_status(run.directory, "done", stage="done", step=_trained_step(run))
            hook.flowkit_run_end(run=run, metrics=run.metrics)
        except Interrupted as exc:
            if exc.recorded:  # the training loop wrote its checkpoint, status and message
                raise
            raise _interrupted_outside_steps(run, stage, exc) from None
        except BaseException as exc:
            _record_failure(run, stage, exc)
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


def _execute_worker(run: PipelineRun, loop: TrainLoop | None = None, trained: bool = False) -> PipelineRun:
    """A rank other than 0: its share of training, nothing written. Sampling and evaluation are rank
    0's alone (they are cheap next to training, and their draws then do not depend on the number of
    processes), so this rank ends when training does, after leaving the process group together with
    the others (rank 0 leaves it before sampling)."""
    with SignalGuard() as guard:
        run.signals = guard
        try:
            if run.pipeline.model.trainable and not trained and run.hook.flowkit_train(run=run) is None:
                train(run, loop)
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
    resume = f"flowkit resume {run.directory}"
    name = signal_name(exc.signum)
    weights = run.directory / "model.pt"
    if stage in ("start", "train") and run.pipeline.model.trainable and not weights.is_file():
        step = run.resumed_from or 0
        message = (
            f"{run.source}: interrupted by {name} before training step {step + 1}; nothing new was "
            f"trained. Continue with: {resume}"
        )
        write_status(run.directory, "interrupted", stage="train", step=step, message=message, resume=resume)
        return Interrupted(message, exc.signum, recorded=True)
    where = "evaluating" if stage == "evaluate" else "sampling"
    kept = f"the trained weights are in {weights}; " if run.pipeline.model.trainable else ""
    message = (
        f"{run.source}: interrupted by {name} while {where}; {kept}"
        f"sample and evaluate again with: {resume} (or `flowkit sample {run.directory}` for samples only)"
    )
    write_status(
        run.directory, "interrupted", stage="sample", step=_trained_step(run), message=message, resume=resume
    )
    return Interrupted(message, exc.signum, recorded=True)


def _record_failure(run: PipelineRun, stage: str, exc: BaseException) -> None:
    """``failed`` in ``status.json`` with the error, unless the stage already recorded its state."""
    status = read_status(run.directory)
    if status is not None and status["state"] in ("diverged", "interrupted"):
        return
    message = str(exc) if isinstance(exc, FlowkitError) else f"{type(exc).__name__}: {exc}"
    if current_world().distributed:
        message = failure_message(exc, current_world())
    newest = list_checkpoints(run.directory)
    resume = f"flowkit resume {run.directory}" if newest or stage != "train" else None
    step = newest[-1][0] if newest and stage == "train" else _trained_step(run) if stage != "train" else 0
    write_status(run.directory, "failed", stage=stage, step=step, message=message, resume=resume)


@contextlib.contextmanager
def _stage(run: PipelineRun, name: str) -> Iterator[None]:
    run.hook.flowkit_stage(run=run, stage=name, state="start")
    started = time.perf_counter()
    try:
        yield
        run.pipeline.device.synchronize()
        run.metrics[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
    finally:  # reporters close what they opened (progress bars) even when the stage fails
        run.hook.flowkit_stage(run=run, stage=name, state="end")


# ---------------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------------

#: Tables ``flowkit resume --set`` may not change: they define what the checkpoint holds.
FIXED_ON_RESUME = ("data", "path", "model", "loss")


def resume_run(
    directory: str | Path,
    manager: PluginManager,
    overrides: Sequence[str] = (),
    out: str | None = None,
    quiet: bool = False,
    command: str | None = None,
    warn: Any = None,
) -> PipelineRun:
    """Continue the run in ``directory`` from its newest valid checkpoint, to ``[train] steps``.

    An interrupted, killed, diverged or failed run continues in place; its final weights and samples
    are bitwise those of the uninterrupted run on the CPU (same overrides aside). A run whose training
    finished but whose sampling did not only samples and evaluates. A finished run is extended only
    with ``--set train.steps=M`` above its step, into a new run directory (``out``, or a numbered
    sibling), so nothing it holds is overwritten. ``warn(text)`` reports skipped checkpoint files.
    """
    world = current_world()
    if world.distributed and not world.is_main:
        return _resume_worker(directory, manager, quiet)
    sent: list[bool] = []
    try:
        return _resume(directory, manager, overrides, out, quiet, command, warn, sent)
    except FlowkitError as exc:
        if world.distributed and not sent:  # the other ranks wait for what to resume: tell them why not
            from_main(_raise(exc), world)
        raise


def _raise(exc: FlowkitError) -> Any:
    def make() -> None:
        raise exc

    return make


def _resume_worker(directory: str | Path, manager: PluginManager, quiet: bool) -> PipelineRun:
    """A rank other than 0 resuming: rank 0 sends the resolved pipeline and the checkpoint it chose."""
    plan: dict[str, Any] = from_main(lambda: {}, current_world())
    pipeline = build_pipeline(plan["pipeline"], (), manager)
    run = PipelineRun(pipeline, Path(plan["target"]), WorkerHooks(manager.hook), quiet=True)
    run.resumed_from = plan["step"]
    loop = None
    if plan["trainable"]:
        loop = TrainLoop(pipeline)
        if plan["state"] is not None:
            loop.load_state_dict(plan["state"])
    return _execute_worker(run, loop, trained=plan["trained"])


def _resume(
    directory: str | Path,
    manager: PluginManager,
    overrides: Sequence[str],
    out: str | None,
    quiet: bool,
    command: str | None,
    warn: Any,
    sent: list[bool],
) -> PipelineRun:
    root = Path(directory)
    status = _resumable_status(root)
    _check_resume_overrides(root, overrides)
    pipeline = build_pipeline(root / "pipeline.toml", overrides, manager)
    record = read_toml(root / "pipeline.toml").get("flowkit", {})
    history = list(record.get("history", [])) if isinstance(record, dict) else []
    trainable = pipeline.model.trainable and pipeline.train is not None
    state, path, skipped = newest_checkpoint(root) if trainable else (None, None, [])
    for line in skipped:
        (warn or (lambda text: None))(f"skipped {line}")
    step = int(state["step"]) if state is not None else 0
    total = pipeline.train.steps if trainable and pipeline.train is not None else 0
    if trainable and step > total:
        raise ConfigError(
            f"{root}: the newest checkpoint ({path}) is at step {step}, beyond [train] steps = {total}; "
            f"resume with --set train.steps=M for M >= {step}"
        )
    state_name = status["state"] if status is not None else "unknown"
    if state_name == "done":
        if not trainable or step >= total:
            more = (
                f" To train further: flowkit resume {root} --set train.steps=M with M > {step} "
                "(written into a new run directory)"
                if trainable
                else ""
            )
            raise FlowkitError(f"{root}: the run is done; nothing to resume.{more}")
        target = run_directory(pipeline.run.out, pipeline.source, out if out is not None else str(root))
    elif out is not None:
        raise ConfigError(f"--out: {root} is not finished; it is resumed in place (drop --out)")
    else:
        target = root
    history.append(f"step {step}: {command if command is not None else _command_line()}")
    resolved = pipeline.resolved(manager, str(record.get("command", "")) if isinstance(record, dict) else "")
    resolved["flowkit"]["source"] = str(record.get("source", resolved["flowkit"]["source"]))
    resolved["flowkit"]["history"] = history
    write_toml(target / "pipeline.toml", resolved)
    trained = trainable and step >= total
    if current_world().distributed:  # the other ranks resume the same pipeline from the same state
        plan = {"pipeline": resolved, "state": state, "step": step, "target": str(target)}
        from_main(lambda: {**plan, "trainable": trainable, "trained": trained}, current_world())
        sent.append(True)
    run = PipelineRun(pipeline, target, manager.hook, quiet=quiet, resumed_from=step)
    if target != root and path is not None:
        run.metrics["extended_from"] = str(path)
    run.metrics["resumed_from_step"] = step
    loop = None
    if trainable:
        loop = TrainLoop(pipeline)
        if state is not None:
            loop.load_state_dict(state)
        if trained:
            if not (target / "model.pt").is_file():  # killed between the final checkpoint and model.pt
                save_state(target / "model.pt", loop.weights(step))
            loop.finish()
    write_status(
        target,
        "running",
        stage="train" if trainable and not trained else "sample",
        step=step,
        resume=f"flowkit resume {target}",
    )
    return _execute(run, loop, trained=trained)


def _resumable_status(root: Path) -> dict[str, Any] | None:
    if not root.is_dir():
        raise FlowkitError(f"{root}: no such run directory")
    if not (root / "pipeline.toml").is_file() or (root / "pipeline.toml").stat().st_size == 0:
        raise FlowkitError(f"{root}: not a run directory (no resolved pipeline.toml)")
    status = read_status(root)
    if status is not None and status["state"] == "running":
        raise FlowkitError(
            f"{root}: the run is still running (process {status.get('pid')} on {status.get('host')}); "
            "stop it first (Ctrl-C, or kill -TERM: both save a checkpoint)"
        )
    return status


def _check_resume_overrides(root: Path, overrides: Sequence[str]) -> None:
    from flowkit.config import parse_override

    for text in overrides:
        parts, _ = parse_override(text)
        if parts[0] in FIXED_ON_RESUME or parts[:2] == ("run", "seed"):
            raise ConfigError(
                f"--set {text}: a resumed run keeps its [{parts[0]}]"
                + (" seed" if parts[0] == "run" else "")
                + f" (the checkpoints of {root} were trained with it); start a new run with "
                "`flowkit run` to change it"
            )
