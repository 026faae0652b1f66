"""MLflow: a run in a file store inside the run directory, ``RUN_DIR/mlruns`` (``[mlflow] enabled =
true``), or in the tracking server or database ``[mlflow] tracking_uri`` names.

Logs ``train/loss`` and ``train/lr`` (and a loss's extra scalars) every ``[train] log_every`` steps,
the final metrics as ``metrics/<name>``, the resolved pipeline as parameters (``train.lr``, ...) and as
the artifact ``pipeline.toml``. The MLflow run id is kept in ``RUN_DIR/mlflow-run-id``: ``flowkit
resume`` continues the same MLflow run. MLflow keeps every value it is given, so the steps a stopped
run logged after its checkpoint appear twice there (the resumed run's values carry the later
timestamps); parameters cannot change in MLflow, so those a resume changes (``--set train.lr``) are
in the artifact only (``mlflow ui --backend-store-uri RUN_DIR/mlruns``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from flowkit import hookimpl
from flowkit.params import param
from flowkit_trackers.common import (
    enabled_field,
    final_step,
    flatten,
    resolved_pipeline,
    scalars,
    store_id,
    stored_id,
)

if TYPE_CHECKING:
    from flowkit.interfaces import Run

#: The file of the run directory that keeps the MLflow run id.
ID_FILE = "mlflow-run-id"
#: The file store's folder in the run directory (when ``tracking_uri`` is empty).
FOLDER = "mlruns"
#: MLflow's limit on the length of a parameter's value.
MAX_PARAM = 6000


@attrs.define(frozen=True)
class MlflowSettings:
    """``[mlflow]``: an MLflow run, in a file store inside the run directory by default."""

    enabled: bool = enabled_field("mlflow", "mlflow")
    experiment: str = param("flowkit", doc="The MLflow experiment (made when it does not exist).")
    tracking_uri: str = param("", doc="Where to track; empty: the file store RUN_DIR/mlruns.")


# The client and run id of each tracked run (by its directory).
_runs: dict[str, tuple[Any, str]] = {}


@hookimpl
def flowkit_register(registry: Any) -> None:
    registry.add_table("mlflow", MlflowSettings)


@contextlib.contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is set: set it while the client
    opens the run directory's own store (a folder that needs no server and travels with the run),
    and only then."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def _client(run: Run, uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    if uri:
        return MlflowClient(tracking_uri=uri)
    store = (run.directory / FOLDER).resolve()
    with _file_store_allowed():  # the client opens its store when it is made
        return MlflowClient(tracking_uri=store.as_uri())


@hookimpl
def flowkit_run_start(run: Run) -> None:
    settings = run.table("mlflow")
    if settings is None or not settings.enabled:
        return
    client = _client(run, settings.tracking_uri)
    text, tables = resolved_pipeline(run)
    previous = stored_id(run, ID_FILE) if run.resumed_from is not None else None
    if previous is not None:
        run_id = previous
        client.update_run(run_id, status="RUNNING")
        logged = set(client.get_run(run_id).data.params)
    else:
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = client.create_experiment(settings.experiment)
        run_id = client.create_run(experiment_id, run_name=run.directory.name).info.run_id
        store_id(run.directory, ID_FILE, run_id)
        logged = set()
    from mlflow.entities import Param

    params = [
        Param(key, str(value)[:MAX_PARAM])
        for key, value in flatten(tables).items()
        if key not in logged  # an MLflow parameter never changes: a resume adds only new ones
    ]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
        client.log_batch(run_id, params=params[start : start + 100])
    client.log_text(run_id, text, "pipeline.toml")
    _runs[str(run.directory)] = (client, run_id)


def _log(run: Run, values: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    client, run_id = _runs[str(run.directory)]
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])


@hookimpl
def flowkit_log(run: Run, step: int, metrics: dict[str, Any]) -> None:
    if str(run.directory) in _runs:
        _log(run, {f"train/{k}": v for k, v in scalars(metrics).items()}, step)


@hookimpl
def flowkit_run_end(run: Run, metrics: dict[str, Any]) -> None:
    if str(run.directory) not in _runs:
        return
    _log(run, {f"metrics/{k}": v for k, v in scalars(metrics).items()}, final_step(run))
    client, run_id = _runs.pop(str(run.directory))
    client.set_terminated(run_id, "FINISHED")
