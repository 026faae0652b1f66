"""The train stage: the engine's implementation of ``flowkit_train``, and its run-directory bookkeeping.

An ordinary hook implementation (``trylast``, registered by the registry as one of flowkit's own
plugins, never blocked): a plugin whose ``flowkit_train`` returns something other than ``None`` trains
instead. :func:`train` runs the :class:`~flowkit.engine.loop.TrainLoop` (a fresh one, or one restored
from ``run.training_state`` when the run was resumed) up to ``[train] steps``: logging, checkpoints
every ``checkpoint_every`` steps and at the end, the hooks, and the run's status (through
:mod:`flowkit.engine.status`).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from flowkit.engine import status
from flowkit.engine.checkpoints import checkpoint_name, list_checkpoints, prune_checkpoints, save_state
from flowkit.engine.distributed import any_rank, current_world
from flowkit.engine.guide_files import prune_guide_checkpoints, save_guide_checkpoint, save_guide_weights
from flowkit.engine.interrupts import Interrupted, SignalGuard, signal_name
from flowkit.engine.loop import Diverged, TrainLoop
from flowkit.engine.records import PipelineRun
from flowkit.engine.teacher import start_from_init
from flowkit.errors import FlowkitError
from flowkit.hookspecs import hookimpl


@hookimpl(trylast=True, specname="flowkit_train")
def train(run: PipelineRun) -> bool:
    """The engine's train stage: a fresh :class:`TrainLoop`, or one continuing ``run.training_state``
    (a resumed run), run to ``[train] steps`` by :func:`train_with`. Returns ``True`` (trained)."""
    if run.signals is not None:  # from here on a signal waits for the end of a step
        run.signals.deferring = True
    if run.training_state is None:  # a fresh run may start from another run's weights
        start_from_init(run.pipeline)
    loop = TrainLoop(run.pipeline)
    if run.training_state is not None:
        loop.load_state_dict(run.training_state)
    train_with(run, loop)
    return True


def train_with(run: PipelineRun, loop: TrainLoop) -> None:
    """Run ``loop`` up to ``[train] steps`` as the train stage does. A deferred SIGINT/SIGTERM
    (``run.signals``) ends the step, writes a checkpoint and raises :class:`Interrupted`; divergence
    raises a :class:`FlowkitError` naming the last good checkpoint."""
    guard = run.signals
    if guard is not None:  # from here on a signal waits for the end of a step
        guard.deferring = True
    cfg, hook = loop.cfg, run.hook
    main = loop.world.is_main  # only rank 0 writes the run directory
    try:
        for step, loss, mean_loss in loop.run(cfg.steps):
            hook.flowkit_train_step(run=run, step=step, loss=loss)
            if mean_loss is not None:
                hook.flowkit_log(
                    run=run, step=step, metrics={"loss": mean_loss, "lr": loop.lr, **loop.last_scalars}
                )
            signum = _stop_requested(guard, loop)
            if signum is not None:
                path = _checkpoint(run, loop)
                raise _interrupted(run, signum, step, path)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                _checkpoint(run, loop)
            if main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                status.running(run.directory, "train", step, checkpoint=_newest(run))
        _checkpoint(run, loop)  # the final state: a finished run can be extended
        if main:
            if loop.guide is not None:  # before model.pt, whose presence says that training is done
                save_guide_weights(run.directory, loop.guide.weights())
            _save_weights(run, loop.weights(cfg.steps), "model.pt")
    except Diverged as exc:
        raise _diverged(run, loop, exc) from None
    except Interrupted as exc:
        if exc.recorded:
            raise
        raise _cut_short(run, loop, exc) from None  # a second signal: it stops at once
    finally:
        loop.close()  # the pairing worker, if any: on every way out
        if guard is not None:
            guard.deferring = False
    if guard is not None and guard.requested is not None:  # came during the final save: training is done
        raise Interrupted(f"stopped by {signal_name(guard.requested)}", guard.requested)
    if loop.last_logged is not None:
        run.metrics["final_loss"] = loop.last_logged
    loop.finish()
    run.metrics["train_steps"] = cfg.steps


def _stop_requested(guard: SignalGuard | None, loop: TrainLoop) -> int | None:
    """The deferred signal to stop at this step's end, if any. Under torchrun the ranks agree (one
    tiny all-reduce a step): torchrun forwards a signal to every rank, but not at the same step, and
    all must leave the loop together (the checkpoint is a collective)."""
    signum = guard.requested if guard is not None else None
    if loop.world.distributed and any_rank(signum is not None, loop.device, loop.world):
        return signum if signum is not None else int(signal.SIGTERM)  # a peer was signalled first
    return signum


def _checkpoint(run: PipelineRun, loop: TrainLoop) -> str:
    """Write ``checkpoint-<step>.pt`` (checked first), drop the oldest beyond ``keep_checkpoints``.
    Every rank takes part in the state (a collective); only rank 0 writes it."""
    state = loop.state_dict()
    if not loop.world.is_main:
        return str(run.directory / checkpoint_name(loop.current_step))
    guide = state.pop("guide", None)
    if guide is not None:  # first: a checkpoint on disk always has its guide beside it
        save_guide_checkpoint(run.directory, loop.current_step, guide)
    path = save_state(run.directory / checkpoint_name(loop.current_step), state)
    prune_checkpoints(run.directory, loop.cfg.keep_checkpoints)
    if guide is not None:
        prune_guide_checkpoints(run.directory)
    run.hook.flowkit_checkpoint(run=run, step=loop.current_step, path=str(path))
    return str(path)


def _save_weights(run: PipelineRun, state: dict[str, Any], name: str) -> str:
    path = save_state(run.directory / name, state)
    run.hook.flowkit_checkpoint(run=run, step=state["step"], path=str(path))
    return str(path)


def _newest(run: PipelineRun) -> str | None:
    found = list_checkpoints(run.directory)
    return found[-1][1].name if found else None


def _interrupted(run: PipelineRun, signum: int, step: int, path: str) -> Interrupted:
    resume = status.resume_command(run.directory)
    message = (
        f"{run.source}: interrupted by {signal_name(signum)} at training step {step} of "
        f"{run.pipeline.train.steps if run.pipeline.train else step}; the training state is saved in "
        f"{path}. Continue with: {resume}"
    )
    if current_world().is_main:
        status.stopped(
            run.directory, "interrupted", "train", step, message, resume, checkpoint=Path(path).name
        )
    return Interrupted(message, signum, recorded=True)


def _cut_short(run: PipelineRun, loop: TrainLoop, exc: Interrupted) -> Interrupted:
    """A signal that stopped training at once (a second Ctrl-C, not waiting for the step's checkpoint):
    what was trained, what was saved and what is lost, as they are — "nothing new was trained" only
    when no step was completed since the run (re)started."""
    resume = status.resume_command(run.directory)
    name, done, start = signal_name(exc.signum), loop.current_step, run.resumed_from or 0
    total = loop.cfg.steps
    saved = [(step, path) for step, path in list_checkpoints(run.directory) if step <= done]
    checkpoint = saved[-1] if saved else None
    if done <= start:
        message = (
            f"{run.source}: interrupted by {name} before training step {start + 1}; nothing new was "
            f"trained. Continue with: {resume}"
        )
    elif checkpoint is not None and checkpoint[0] == done:
        message = (
            f"{run.source}: interrupted by {name} at training step {done} of {total}; the training "
            f"state is saved in {checkpoint[1]}. Continue with: {resume}"
        )
    else:
        since = checkpoint[0] if checkpoint is not None else 0
        kept = (
            f"it continues from {checkpoint[1]} (step {since})"
            if checkpoint is not None
            else "no checkpoint was written, so it starts again from step 0"
        )
        message = (
            f"{run.source}: interrupted by {name} at training step {done} of {total} before a checkpoint "
            f"of it was written (a second signal stops at once); steps {since + 1} to {done} are lost and "
            f"{kept}. Continue with: {resume}"
        )
    if current_world().is_main:
        status.stopped(
            run.directory,
            "interrupted",
            "train",
            checkpoint[0] if checkpoint is not None else 0,
            message,
            resume,
            checkpoint=checkpoint[1].name if checkpoint is not None else None,
        )
    return Interrupted(message, exc.signum, recorded=True)


def _diverged(run: PipelineRun, loop: TrainLoop, exc: Diverged) -> FlowkitError:
    """The divergence message: the step, the last good checkpoint and how to resume from it."""
    good = [(step, path) for step, path in list_checkpoints(run.directory) if step < exc.step]
    lower = f"{loop.cfg.lr / 10:g}"
    if good:
        step, path = good[-1]
        resume: str | None = f"flowkit resume {run.directory} --set train.lr={lower}"
        advice = (
            f"the last good checkpoint is {path} (step {step}); resume from it with a lower learning "
            f"rate: {resume} (or set [train] grad_clip)"
        )
    else:
        resume = None
        advice = (
            f"no checkpoint was written before it; lower [train] lr (now {loop.cfg.lr}, e.g. {lower}) or "
            "set [train] grad_clip, and set [train] checkpoint_every to be able to resume"
        )
    message = f"{run.source}: {exc}; {advice}"
    if loop.world.is_main:
        status.stopped(
            run.directory,
            "diverged",
            "train",
            exc.step,
            message,
            resume,
            checkpoint=good[-1][1].name if good else None,
        )
    return FlowkitError(message)
