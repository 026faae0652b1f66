"""Resuming a run: continue one that was interrupted, killed, diverged or failed from its newest valid
checkpoint (in place), or extend a finished one into a new run directory.

The restored training state reaches the train stage through the run record
(:attr:`~flowkit.engine.records.PipelineRun.training_state`); the stages then run as in a new run
(:func:`flowkit.engine.run.execute`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowkit.config import parse_override, read_toml
from flowkit.engine import status
from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoint_fields import check_fields
from flowkit.engine.checkpoints import list_checkpoints, newest_checkpoint, save_state
from flowkit.engine.distributed import current_world, from_main
from flowkit.engine.guide_files import GUIDE_WEIGHTS, attach_guide_state, save_guide_weights
from flowkit.engine.lock import hold_run
from flowkit.engine.loop import TrainLoop
from flowkit.engine.manifest import adopt, write_resolved
from flowkit.engine.records import PipelineRun
from flowkit.engine.run import WorkerHooks, command_line, execute, execute_worker
from flowkit.engine.rundir import read_status, remove_temporaries, run_directory
from flowkit.errors import ConfigError, FlowkitError
from flowkit.registry import PluginManager

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
    command = command if command is not None else command_line()
    try:
        root = Path(directory)
        if not root.is_dir():
            raise FlowkitError(f"{root}: no such run directory")
        with contextlib.ExitStack() as held:
            held.enter_context(hold_run(root, command))  # before anything is read: one owner at a time
            return _resume(root, manager, overrides, out, quiet, command, warn, sent, held)
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
    if plan["trainable"] and plan["trained"]:
        # Rank 0 restores a loop to write the final weights; its set-up (DDP's) is a collective.
        loop = TrainLoop(pipeline)
        if plan["state"] is not None:
            loop.load_state_dict(plan["state"])
    elif plan["trainable"]:
        run.training_state = plan["state"]
    return execute_worker(run, trained=plan["trained"])


def _resume(
    root: Path,
    manager: PluginManager,
    overrides: Sequence[str],
    out: str | None,
    quiet: bool,
    command: str,
    warn: Any,
    sent: list[bool],
    held: contextlib.ExitStack,
) -> PipelineRun:
    recorded = _resumable_status(root)
    remove_temporaries(root)  # what a write cut short by a kill left behind
    _check_resume_overrides(root, overrides)
    # A run of a flowkit before manifests: its files are taken as they are (unverified, as that flowkit
    # did) and recorded, so that from now on they are verified like the ones this resume writes.
    adopt(root, ["pipeline.toml", "model.pt", *(path.name for _, path in list_checkpoints(root))])
    pipeline = build_pipeline(root / "pipeline.toml", overrides, manager)  # its digest checked first
    record = read_toml(root / "pipeline.toml").get("flowkit", {})
    history = list(record.get("history", [])) if isinstance(record, dict) else []
    trainable = pipeline.model.trainable and pipeline.train is not None

    def check(state: dict[str, Any], path: Path) -> None:
        check_fields(state, path, pipeline)
        attach_guide_state(state, path, pipeline)  # a guide trained alongside: its state at that step

    state, path, skipped = newest_checkpoint(root, check) if trainable else (None, None, [])
    for line in skipped:
        (warn or (lambda text: None))(f"skipped {line}")
    step = int(state["step"]) if state is not None else 0
    total = pipeline.train.steps if trainable and pipeline.train is not None else 0
    if trainable and step > total:
        raise ConfigError(
            f"{root}: the newest checkpoint ({path}) is at step {step}, beyond [train] steps = {total}; "
            f"resume with --set train.steps=M for M >= {step}"
        )
    state_name = recorded["state"] if recorded is not None else "unknown"
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
        held.enter_context(hold_run(target, command))
    elif out is not None:
        raise ConfigError(f"--out: {root} is not finished; it is resumed in place (drop --out)")
    else:
        target = root
    history.append(f"step {step}: {command}")
    resolved = pipeline.resolved(manager, str(record.get("command", "")) if isinstance(record, dict) else "")
    resolved["flowkit"]["source"] = str(record.get("source", resolved["flowkit"]["source"]))
    resolved["flowkit"]["history"] = history
    write_resolved(target / "pipeline.toml", resolved)
    trained = trainable and step >= total
    if current_world().distributed:  # the other ranks resume the same pipeline from the same state
        plan = {"pipeline": resolved, "state": state, "step": step, "target": str(target)}
        from_main(lambda: {**plan, "trainable": trainable, "trained": trained}, current_world())
        sent.append(True)
    run = PipelineRun(pipeline, target, manager.hook, quiet=quiet, resumed_from=step)
    if target != root and path is not None:
        run.metrics["extended_from"] = str(path)
    run.metrics["resumed_from_step"] = step
    if trained:  # sample with the final weights; the train stage is skipped
        loop = TrainLoop(pipeline)
        if state is not None:
            loop.load_state_dict(state)
        if loop.guide is not None and not (target / GUIDE_WEIGHTS).is_file():
            save_guide_weights(target, loop.guide.weights())
        if not (target / "model.pt").is_file():  # killed between the final checkpoint and model.pt
            save_state(target / "model.pt", loop.weights(step))
        loop.finish()
    elif trainable:
        run.training_state = state
    status.running(target, "train" if trainable and not trained else "sample", step)
    return execute(run, trained=trained)


def _resumable_status(root: Path) -> dict[str, Any] | None:
    if not (root / "pipeline.toml").is_file() or (root / "pipeline.toml").stat().st_size == 0:
        raise FlowkitError(f"{root}: not a run directory (no resolved pipeline.toml)")
    found = read_status(root)
    if found is not None and found["state"] == "running":
        # This process holds the run's lock, so the process that wrote `running` has ended, whatever
        # its pid now names (another process may have it): the run was killed.
        found = {**found, "state": "killed"}
    return found


def _check_resume_overrides(root: Path, overrides: Sequence[str]) -> None:
    for text in overrides:
        parts, _ = parse_override(text)
        if parts[0] in FIXED_ON_RESUME or parts[:2] in (("run", "seed"), ("train", "guide")):
            raise ConfigError(
                f"--set {text}: a resumed run keeps its [{parts[0]}]"
                + {"run": " seed", "train": " guide"}.get(parts[0], "")
                + f" (the checkpoints of {root} were trained with it); start a new run with "
                "`flowkit run` to change it"
            )
