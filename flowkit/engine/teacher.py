"""Another finished run as a component's teacher: the engine's side of :attr:`StageContext.open_run`.

A component (reflow's coupling) receives ``open_run`` in its ``setup(stage)`` and calls it with a run
directory; :func:`open_teacher` checks that the run finished training and returns a
:class:`TeacherRun` (a :class:`~flowkit.interfaces.TrainedRun`) whose ``draw`` samples with the run's
own ``[sample]`` sampler from a seed the caller gives (its own run's seed, not the teacher's). Plugins
never import the engine; this is how they reach a trained model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoints import load_state, load_weights
from flowkit.engine.guidance import sample_labels
from flowkit.engine.guide_files import load_guide_weights
from flowkit.engine.records import Pipeline
from flowkit.engine.rundir import read_status
from flowkit.engine.sample import draw_samples
from flowkit.errors import FlowkitError
from flowkit.interfaces import Samples, resolve_relative
from flowkit.registry import PluginManager

#: ``components.set_up``, given by the caller (the components module imports this one).
SetUp = Callable[[Pipeline, str, Path], None]


class TeacherRun:
    """A finished run's pipeline with its sampling weights, built on ``device`` with ``manager``'s
    plugins (those of the pipeline that opens it; the installed ones where ``None``)."""

    def __init__(
        self,
        directory: Path,
        device: torch.device,
        set_up: SetUp | None = None,
        manager: PluginManager | None = None,
    ) -> None:
        self.directory = directory
        self._device = device
        self._set_up = set_up
        self._manager = manager
        self._weights = directory / "model.pt"

    def _pipeline(self, seed: int, steps: int | None) -> Pipeline:
        overrides = [f"run.seed={seed}", f'run.device="{self._device}"']
        if steps is not None:
            overrides.append(f"sample.steps={steps}")
        manager = self._manager if self._manager is not None else PluginManager()
        pipeline = build_pipeline(self.directory / "pipeline.toml", overrides, manager)
        load_weights(self._weights, pipeline.model)
        load_guide_weights(pipeline, self.directory)  # a guide trained alongside: guide.pt
        pipeline.model.eval()
        return pipeline

    @torch.no_grad()
    def draw(self, n: int, seed: int, steps: int | None = None) -> Samples:
        """``n`` pairs ``(x0, samples)`` (and labels) on the CPU by the run's sampler, seeded ``seed``."""
        pipeline = self._pipeline(seed, steps)
        if self._set_up is not None:
            self._set_up(pipeline, "sample", self.directory)
        x0, x1 = draw_samples(pipeline, n)
        nfe = pipeline.sample.simulator.last_nfe
        y = sample_labels(pipeline, n)  # what draw_samples asked of each sample (None: unconditional)
        return Samples(samples=x1.detach().cpu(), nfe=int(nfe or 0), y=y, x0=x0.detach().cpu())

    def weights(self) -> dict[str, Tensor]:
        """The sampling weights of ``model.pt`` (the EMA where the run kept one)."""
        state = load_state(self._weights)
        return dict(state["model"])


def open_teacher(
    directory: Path,
    device: torch.device,
    set_up: SetUp | None = None,
    manager: PluginManager | None = None,
) -> TeacherRun:
    """The finished run in ``directory``, built with ``manager``'s plugins when it samples (``set_up``
    sets up its components first); a :class:`FlowkitError` of one line where there is no run or its
    training has not finished."""
    if not directory.is_dir():
        raise FlowkitError(f"{directory}: no such run directory (a teacher must be a finished run)")
    if not (directory / "pipeline.toml").is_file():
        raise FlowkitError(f"{directory}: not a run directory (no resolved pipeline.toml)")
    if not (directory / "model.pt").is_file():
        status = read_status(directory) or {}
        state = status.get("state", "unknown")
        raise FlowkitError(
            f"{directory}: the run has not finished training (state: {state}; no model.pt); finish it "
            f"with: flowkit resume {directory}"
        )
    return TeacherRun(directory, device, set_up, manager)


def start_from_init(pipeline: Pipeline) -> None:
    """Load the sampling weights of ``[train] init`` (a finished run, relative to the pipeline file)
    into the model before a fresh training starts (a resumed one continues its own checkpoint)."""
    cfg = pipeline.train
    if cfg is None or not cfg.init:
        return
    try:
        run = open_teacher(resolve_relative(cfg.init, pipeline.source).resolve(), pipeline.device.device)
        load_weights(run.directory / "model.pt", pipeline.model)
    except FlowkitError as exc:
        raise FlowkitError(f"{pipeline.source}: [train] init = {cfg.init!r}: {exc}") from None
