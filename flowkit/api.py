"""The Python API, for notebooks and scripts: the same pipelines as the CLI, step by step.

::

    import flowkit

    pipe = flowkit.load_pipeline("examples/moons.toml", overrides=["train.steps=500"])
    losses = pipe.train()                  # the logged losses, [(step, loss), ...]
    x = pipe.sample(1000)                  # tensor (1000, *D) on the CPU
    drawn = pipe.sample(1000, noise=True)  # Samples: .samples, .x0 (the noise they came from), .y
    metrics = pipe.evaluate()              # distance to held-out data and its noise floor
    run = pipe.run(out="runs/moons-nb")    # the whole run, as `flowkit run` writes it

    done = flowkit.open_run("runs/moons")  # a finished run: its metrics, samples and model
    more = done.sample(5000)

A pipeline may be given as a dict of tables instead of a file; its errors name ``<dict>``, the table
and the key, as they name the file for a file.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import attrs
import numpy as np
import torch
from torch import Tensor

from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoints import load_weights
from flowkit.engine.components import set_up
from flowkit.engine.evaluate import measure, plugin_metrics
from flowkit.engine.guidance import sample_labels
from flowkit.engine.guide_files import load_guide_weights
from flowkit.engine.likelihood import evaluate_likelihood, likelihood_metrics, run_settings
from flowkit.engine.loop import Diverged, TrainLoop
from flowkit.engine.records import Pipeline, PipelineRun
from flowkit.engine.run import run_pipeline
from flowkit.engine.sample import draw_samples
from flowkit.engine.teacher import start_from_init
from flowkit.errors import FlowkitError
from flowkit.interfaces import Samples
from flowkit.registry import PluginManager


class LoadedPipeline:
    """A built pipeline in memory: train it, sample it, evaluate it, or run it into a run directory.

    ``pipeline`` is the :class:`flowkit.engine.Pipeline` (every component and table), ``manager`` the
    plugin manager it was built with. Each of :meth:`train`, :meth:`sample` and :meth:`evaluate` sets
    the components up first (``Component.setup``), as the stages of a run do.
    """

    def __init__(self, pipeline: Pipeline, manager: PluginManager, directory: Path | None = None) -> None:
        self.pipeline = pipeline
        self.manager = manager
        #: The run directory the pipeline came from (:func:`open_run`), ``None`` for a pipeline file.
        self.directory = directory
        self.trained = not pipeline.model.trainable
        self._samples: Tensor | None = None
        self._nfe: int | None = None

    def train(self, steps: int | None = None, progress: bool = True) -> list[tuple[int, float]]:
        """Train for ``[train] steps`` (or ``steps``); returns the mean loss every ``log_every`` steps.

        Afterwards the model holds the weights sampling uses (the EMA, where enabled). Same seed, same
        weights as ``flowkit run``. Nothing is written to disk. ``progress`` shows the progress bar
        ``flowkit run`` shows (on stderr, with the running loss); ``progress=False`` hides it.
        """
        if not self.pipeline.model.trainable:
            raise FlowkitError(
                f"{self.pipeline.source}: model '{self.pipeline.model.registered_name}' is exact"
            )
        set_up(self.pipeline, "train", self.directory)
        if not self.trained:
            start_from_init(self.pipeline)
        loop = TrainLoop(self.pipeline)
        total = loop.cfg.steps if steps is None else steps
        bar = _progress_bar(total) if progress else None
        logged = []
        try:
            for step, _, mean in loop.run(total):
                if bar is not None:
                    bar.update(1)
                if mean is not None:
                    logged.append((step, mean))
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
        except Diverged as exc:
            raise FlowkitError(loop.divergence(exc)) from None
        finally:
            if bar is not None:
                bar.close()
        loop.finish()
        self.trained = True
        self._nfe = None
        return logged

    @overload
    def sample(self, n: int | None = None, noise: Literal[False] = False) -> Tensor: ...
    @overload
    def sample(self, n: int | None = None, *, noise: Literal[True]) -> Samples: ...
    def sample(self, n: int | None = None, noise: bool = False) -> Tensor | Samples:
        """``n`` samples (default ``[sample] n``), shape ``(n, *D)``, float32 on the CPU, drawn with the
        ``[sample]`` simulator from the run's sampling seed (``n = [sample] n``: ``flowkit run``'s).

        ``noise=True`` returns a :class:`flowkit.interfaces.Samples` instead: ``samples``, the draws
        of ``p_init`` they came from (``x0 (n, *D)``, float32 on the CPU: simulated again with the
        ``[sample]`` simulator and dynamics they give ``samples``), ``labels`` (a conditional model)
        and ``nfe``. The samples are the same either way."""
        self._require_trained("sample")
        count = self.pipeline.sample.n if n is None else int(n)
        if count <= 0:
            raise FlowkitError(f"sample(n): n must be positive, got {count}")
        set_up(self.pipeline, "sample", self.directory)
        x0, drawn = draw_samples(self.pipeline, count)
        samples = drawn.float().cpu()
        self._samples = samples
        self._nfe = self.pipeline.sample.simulator.last_nfe
        if not noise:
            return samples
        labels = sample_labels(self.pipeline, count)
        return Samples(samples, None, self.pipeline.sample.simulator.last_nfe, labels, x0.float().cpu())

    def labels(self, n: int | None = None) -> Tensor | None:
        """The class asked of each of the ``n`` samples that :meth:`sample` draws (default
        ``[sample] n``), ``(n,)`` int64, from ``[sample] guidance classes``; ``None`` for an
        unconditional model. Deterministic: the labels of ``sample(n)`` whenever it is called."""
        count = self.pipeline.sample.n if n is None else int(n)
        if count <= 0:
            raise FlowkitError(f"labels(n): n must be positive, got {count}")
        return sample_labels(self.pipeline, count)

    def evaluate(self, samples: Tensor | None = None) -> dict[str, Any]:
        """The metrics ``flowkit run`` writes to ``metrics.json`` for ``samples`` (default: the last
        :meth:`sample`, or a fresh ``[sample] n``), timings aside: the ``[evaluate]`` distance, its
        noise floor and their ratio, the likelihood of held-out data (``[evaluate] likelihood``), the
        plugins' metrics (image metrics), and ``nfe`` and ``sample_steps`` for samples drawn here."""
        drawn = samples is None
        if samples is None:
            samples = self._samples if self._samples is not None else self.sample()
        need = self.pipeline.evaluate.n
        if samples.shape[0] < need:
            raise FlowkitError(
                f"evaluate: [evaluate] n = {need} needs as many samples, got {samples.shape[0]}"
            )
        set_up(self.pipeline, "evaluate", self.directory)
        metrics, reference = measure(self.pipeline, samples.float().cpu())
        if drawn and self._nfe is not None:
            metrics.update(nfe=self._nfe, sample_steps=self.pipeline.sample.steps)
        if metrics.get("distance") is None:
            return metrics
        if self.pipeline.evaluate.likelihood is not None:
            metrics.update(likelihood_metrics(self.pipeline))
        labels = sample_labels(self.pipeline, samples.shape[0]) if drawn else None
        offered = Samples(samples.float().cpu(), None, self._nfe or 0, labels)
        with tempfile.TemporaryDirectory() as scratch:  # a run directory for plugins; nothing is kept
            directory = self.directory if self.directory is not None else Path(scratch)
            run = PipelineRun(self.pipeline, directory, self.manager.hook, quiet=True, metrics=metrics)
            plugin_metrics(run, offered, reference)
        return metrics

    def likelihood(self, data: Tensor | None = None, n: int | None = None, **settings: Any) -> dict[str, Any]:
        """The log-likelihood of ``data (N, *D)`` (default: ``n`` held-out points, ``[evaluate]
        likelihood n`` by default) under the model, as ``flowkit likelihood`` reports it: ``nll``
        (nats per point), ``bits_per_dim``, ``nfe``, ... ``settings`` override keys of ``[evaluate]
        likelihood`` (``estimator="hutchinson"``); the per-point values are in ``["log_prob"]``."""
        self._require_trained("likelihood")
        overrides = [f"{key}={_toml_value(value)}" for key, value in settings.items()]
        source = str(self.directory / "pipeline.toml") if self.directory is not None else self.pipeline.source
        chosen = run_settings(self.pipeline, self.manager.registry, overrides, source)
        if n is not None:
            chosen = attrs.evolve(chosen, n=int(n))
        points = None if data is None else data.float()[: n if n is not None else len(data)]
        set_up(self.pipeline, "likelihood", self.directory)
        report = evaluate_likelihood(
            self.pipeline, chosen, points, source="data" if data is not None else "held-out data"
        )
        return {**report.metrics, "log_prob": report.log_prob}

    def run(self, out: str | Path | None = None, quiet: bool = True) -> FinishedRun:
        """Train, sample and evaluate into a new run directory, as ``flowkit run`` does; returns it.

        The pipeline must not have been trained in memory first (the run trains from the seed).
        """
        if self.pipeline.model.trainable and self.trained:
            raise FlowkitError("run(): this pipeline was already trained in memory; load it again to run it")
        done = run_pipeline(
            self.pipeline, self.manager, out=None if out is None else str(out), quiet=quiet, command="api"
        )
        self.trained = True
        return FinishedRun(
            done.directory, LoadedPipeline(self.pipeline, self.manager, done.directory), dict(done.metrics)
        )

    def _require_trained(self, what: str) -> None:
        if not self.trained:
            raise FlowkitError(
                f"{what}: model '{self.pipeline.model.registered_name}' is not trained yet; "
                "call train() first"
            )


class FinishedRun:
    """A run directory written by ``flowkit run``: its metrics, samples and (loaded) model."""

    def __init__(self, directory: Path, pipeline: LoadedPipeline, metrics: dict[str, Any]) -> None:
        self.directory = directory
        self.pipeline = pipeline
        self.metrics = metrics

    @property
    def samples(self) -> Tensor:
        """The run's ``samples.npy``, ``(n, *D)``."""
        return torch.from_numpy(np.load(self.directory / "samples.npy"))

    @property
    def labels(self) -> Tensor | None:
        """The class of each of the run's samples (``labels.npy``), ``(n,)``; ``None`` for an
        unconditional model."""
        file = self.directory / "labels.npy"
        return torch.from_numpy(np.load(file)) if file.is_file() else None

    @overload
    def sample(self, n: int | None = None, noise: Literal[False] = False) -> Tensor: ...
    @overload
    def sample(self, n: int | None = None, *, noise: Literal[True]) -> Samples: ...
    def sample(self, n: int | None = None, noise: bool = False) -> Tensor | Samples:
        """Fresh samples from the trained weights (see :meth:`LoadedPipeline.sample`; their classes:
        ``self.pipeline.labels(n)``); with ``noise=True`` a :class:`~flowkit.interfaces.Samples`
        holding the noise ``x0`` they came from as well."""
        if noise:
            return self.pipeline.sample(n, noise=True)
        return self.pipeline.sample(n)

    def likelihood(self, data: Tensor | None = None, n: int | None = None, **settings: Any) -> dict[str, Any]:
        """The log-likelihood of ``data`` (default: held-out points) under the run's trained model:
        see :meth:`LoadedPipeline.likelihood` (``flowkit likelihood RUN_DIR`` reports the same)."""
        return self.pipeline.likelihood(data, n, **settings)

    def __repr__(self) -> str:
        return f"FinishedRun({str(self.directory)!r})"


def _progress_bar(total: int) -> Any:
    """The training progress bar of ``flowkit run`` (the report plugin's): on stderr, steps and rate."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True, leave=True, mininterval=0.25)


def _toml_value(value: Any) -> str:
    """A Python value as the TOML text of a ``KEY=VALUE`` override."""
    import tomli_w

    return tomli_w.dumps({"v": value})[len("v = ") :].strip()


def load_pipeline(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    manager: PluginManager | None = None,
) -> LoadedPipeline:
    """Build the pipeline in ``source`` (a TOML file, or a dict of tables) with ``--set``-style
    ``overrides`` (``["train.steps=100"]``). Raises :class:`flowkit.errors.ConfigError` naming the
    file (or ``<dict>``), the table and the key of a mistake."""
    manager = manager or PluginManager(warn=False)
    return LoadedPipeline(build_pipeline(source, overrides, manager), manager)


def open_run(directory: str | Path, manager: PluginManager | None = None) -> FinishedRun:
    """Open a finished run directory: its resolved ``pipeline.toml``, ``metrics.json`` and the
    sampling weights of ``model.pt`` loaded into the model."""
    root = Path(directory)
    if not root.is_dir():
        raise FlowkitError(f"{root}: no such run directory")
    missing = [name for name in ("pipeline.toml", "metrics.json") if not (root / name).is_file()]
    if missing:
        raise FlowkitError(f"{root}: not a finished run directory (no {', '.join(missing)})")
    loaded = load_pipeline(root / "pipeline.toml", manager=manager)
    loaded.directory = root
    if loaded.pipeline.model.trainable:
        weights = root / "model.pt"
        if not weights.is_file():
            raise FlowkitError(f"{root}: no model.pt: the run did not finish training")
        load_weights(weights, loaded.pipeline.model)
        load_guide_weights(loaded.pipeline, root)  # a guide trained alongside: guide.pt
        loaded.pipeline.model.eval()
        loaded.trained = True
    metrics = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
    return FinishedRun(root, loaded, metrics)


__all__ = ["FinishedRun", "LoadedPipeline", "PipelineRun", "load_pipeline", "open_run"]
