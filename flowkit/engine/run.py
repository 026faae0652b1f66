"""Orchestration: train -> sample -> evaluate, with the lifecycle hooks, in a new run directory.

Each stage is a hook that plugins may take over (pluggy ``firstresult``): ``flowkit_train``,
``flowkit_sample`` and ``flowkit_evaluate``. The engine runs its own implementation when no plugin
returns a result, so replacing a stage (distributed training, guided sampling) never edits the engine.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from flowkit.engine.build import Pipeline
from flowkit.engine.evaluate import evaluate
from flowkit.engine.rundir import run_directory, write_json, write_toml
from flowkit.engine.sample import sample, sample_times
from flowkit.engine.train import train
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

    The directory holds ``pipeline.toml`` (resolved, with versions and seed), ``model.pt`` (weights only),
    ``samples.npy``, ``metrics.json`` and what the reporter plugins write (plots, logs).
    """
    directory = run_directory(pipeline.run.out, pipeline.source, out)
    run = PipelineRun(pipeline, directory, manager.hook, quiet=quiet)
    command = command if command is not None else shlex.join(["flowkit", *sys.argv[1:]])
    write_toml(directory / "pipeline.toml", pipeline.resolved(manager, command))
    hook = run.hook
    hook.flowkit_run_start(run=run)
    if pipeline.model.trainable:
        with _stage(run, "train"):
            if hook.flowkit_train(run=run) is None:
                train(run)
    with _stage(run, "sample"):
        result: Samples | None = hook.flowkit_sample(run=run)
        if result is None:
            result = sample(run)
    with _stage(run, "evaluate"):
        if hook.flowkit_evaluate(run=run, samples=result) is None:
            evaluate(run, result)
    write_json(run.directory / "metrics.json", run.metrics)  # after the stage: with its own timing
    hook.flowkit_run_end(run=run, metrics=run.metrics)
    return run


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
