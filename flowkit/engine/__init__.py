"""The engine: builds pipelines and runs them, one job a module.

* :mod:`~flowkit.engine.sections` — the non-component tables and the table order;
* :mod:`~flowkit.engine.build` — :func:`build_pipeline`, the :class:`Pipeline` record;
* :mod:`~flowkit.engine.rundir` — the run directory and atomic writes, weights;
* :mod:`~flowkit.engine.train`, :mod:`~flowkit.engine.sample`, :mod:`~flowkit.engine.evaluate` — the
  stages;
* :mod:`~flowkit.engine.likelihood` — log-likelihood by the change of variables;
* :mod:`~flowkit.engine.run` — orchestration with the lifecycle and stage hooks.
"""

from flowkit.engine.build import Pipeline, build_pipeline
from flowkit.engine.run import PipelineRun, run_pipeline
from flowkit.engine.rundir import load_weights
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
    "load_weights",
    "run_pipeline",
    "stage_seed",
]
