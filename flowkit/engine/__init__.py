"""The engine: builds pipelines and runs them, one job a module.

* :mod:`~flowkit.engine.sections` — the non-component tables and the table order;
* :mod:`~flowkit.engine.build` — :func:`build_pipeline`, the :class:`Pipeline` record;
* :mod:`~flowkit.engine.rundir` — the run directory, its status file, atomic and durable writes;
* :mod:`~flowkit.engine.checkpoints` — the training state and weights files, loaded weights-only;
* :mod:`~flowkit.engine.train`, :mod:`~flowkit.engine.sample`, :mod:`~flowkit.engine.evaluate` — the
  stages;
* :mod:`~flowkit.engine.likelihood` — log-likelihood by the change of variables;
* :mod:`~flowkit.engine.interrupts` — SIGINT/SIGTERM, deferred to the end of a training step;
* :mod:`~flowkit.engine.distributed` — data-parallel training under torchrun: ranks, what they share;
* :mod:`~flowkit.engine.run` — orchestration with the lifecycle and stage hooks; resuming a run;
* :mod:`~flowkit.engine.reuse` — sampling and evaluating a trained run again.
"""

from flowkit.engine.build import Pipeline, build_pipeline
from flowkit.engine.checkpoints import load_weights
from flowkit.engine.reuse import evaluate_run, sample_run
from flowkit.engine.run import PipelineRun, resume_run, run_pipeline
from flowkit.engine.sections import TABLES
from flowkit.engine.seeds import stage_seed
from flowkit.engine.train import TrainLoop, WeightAverage

__all__ = [
    "TABLES",
    "Pipeline",
    "PipelineRun",
    "TrainLoop",
    "WeightAverage",
    "build_pipeline",
    "evaluate_run",
    "load_weights",
    "resume_run",
    "run_pipeline",
    "sample_run",
    "stage_seed",
]
