"""The engine: builds pipelines and runs them, one job a module.

* :mod:`~flowkit.engine.sections` — the non-component tables and the table order;
* :mod:`~flowkit.engine.records` — the :class:`Pipeline` and :class:`PipelineRun` records, below the
  code that uses them;
* :mod:`~flowkit.engine.build` — :func:`build_pipeline`;
* :mod:`~flowkit.engine.rundir` — the run directory, its status file, atomic and durable writes;
* :mod:`~flowkit.engine.status` — the one writer of a run's ``status.json``;
* :mod:`~flowkit.engine.checkpoints` — the training state and weights files, loaded weights-only;
* :mod:`~flowkit.engine.optim` — the learning-rate schedule, the EMA of the weights, AdamW;
* :mod:`~flowkit.engine.loop` — :class:`TrainLoop`, the step machine and its whole state;
* :mod:`~flowkit.engine.train`, :mod:`~flowkit.engine.sample`, :mod:`~flowkit.engine.evaluate` — the
  stages: ``trylast`` implementations of ``flowkit_train``, ``flowkit_sample``, ``flowkit_evaluate``
  (:func:`draw_samples`: the noise and the samples it becomes);
* :mod:`~flowkit.engine.components` — every built component, set up as a stage starts;
* :mod:`~flowkit.engine.likelihood` — log-likelihood by the change of variables;
* :mod:`~flowkit.engine.interrupts` — SIGINT/SIGTERM, deferred to the end of a training step;
* :mod:`~flowkit.engine.distributed` — data-parallel training under torchrun: ranks, what they share;
* :mod:`~flowkit.engine.launch` — starting ``flowkit run --nproc N`` under torchrun;
* :mod:`~flowkit.engine.run` — orchestration: calls the lifecycle and stage hooks, nothing else;
* :mod:`~flowkit.engine.resume` — resuming an interrupted run, or extending a finished one;
* :mod:`~flowkit.engine.reuse` — sampling and evaluating a trained run again.
"""

from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoints import load_weights
from flowkit.engine.loop import TrainLoop
from flowkit.engine.optim import WeightAverage
from flowkit.engine.records import Pipeline, PipelineRun
from flowkit.engine.resume import resume_run
from flowkit.engine.reuse import evaluate_run, sample_run
from flowkit.engine.run import run_pipeline
from flowkit.engine.sample import draw_samples
from flowkit.engine.sections import TABLES
from flowkit.engine.seeds import stage_seed

__all__ = [
    "TABLES",
    "Pipeline",
    "PipelineRun",
    "TrainLoop",
    "WeightAverage",
    "build_pipeline",
    "draw_samples",
    "evaluate_run",
    "load_weights",
    "resume_run",
    "run_pipeline",
    "sample_run",
    "stage_seed",
]
