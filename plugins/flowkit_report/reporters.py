"""Hook implementations of the built-in reporters."""

from __future__ import annotations

import json
from typing import Any

from flowkit import hookimpl

# Open progress bars per run (a run is identified by its directory).
_bars: dict[str, Any] = {}


def _console(run: Any) -> bool:
    return not run.quiet and run.pipeline.report.progress


def _open_bar(run: Any, key: str, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, leave=True, mininterval=0.25)
    _bars[f"{run.directory}:{key}"] = bar
    return bar


def _close_bar(run: Any, key: str) -> None:
    bar = _bars.pop(f"{run.directory}:{key}", None)
    if bar is not None:
        bar.close()


@hookimpl
def flowkit_run_start(run: Any) -> None:
    if run.pipeline.report.log:
        (run.directory / "metrics.jsonl").write_text("", encoding="utf-8")


@hookimpl
def flowkit_stage(run: Any, stage: str, state: str) -> None:
    if not _console(run):
        return
    if state == "start" and stage == "train" and run.pipeline.train is not None:
        _open_bar(run, "train", run.pipeline.train.steps, "train")
    elif state == "start" and stage == "sample":
        _open_bar(run, "sample", run.pipeline.sample.steps, "sample")
    elif state == "end":
        _close_bar(run, stage)


@hookimpl
def flowkit_train_step(run: Any, step: int, loss: Any) -> None:
    bar = _bars.get(f"{run.directory}:train")
    if bar is not None:
        bar.update(1)


@hookimpl
def flowkit_log(run: Any, step: int, metrics: dict[str, Any]) -> None:
    bar = _bars.get(f"{run.directory}:train")
    if bar is not None and "loss" in metrics:
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
    if run.pipeline.report.log:
        with open(run.directory / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")


@hookimpl
def flowkit_sampling_progress(run: Any, done: int, total: int) -> None:
    bar = _bars.get(f"{run.directory}:sample")
    if bar is not None:
        bar.update(done - bar.n)


@hookimpl
def flowkit_samples_ready(run: Any, samples: Any, reference: Any, trajectory: Any) -> None:
    if not run.pipeline.report.plots:
        return
    from flowkit_report import plots

    try:
        plots.write_plots(run, samples, reference, trajectory)
    except Exception as exc:  # e.g. matplotlib missing or broken: the run's results are already saved
        plots._report_failure(run, "the plots", exc)


@hookimpl
def flowkit_run_end(run: Any, metrics: dict[str, Any]) -> None:
    for key in [k for k in _bars if k.startswith(f"{run.directory}:")]:
        _bars.pop(key).close()
