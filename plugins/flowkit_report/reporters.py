"""Hook implementations of the built-in reporters, and their ``[report]`` table."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

from flowkit import files, hookimpl
from flowkit.params import param

if TYPE_CHECKING:
    from flowkit.interfaces import Run


@attrs.define(frozen=True)
class ReportSettings:
    """``[report]``: what the reporters show and write."""

    progress: bool = param(True, doc="Show progress bars (off with --quiet).")
    plots: bool = param(True, doc="Write PNG plots of samples, trajectories and the vector field (2D).")
    log: bool = param(True, doc="Write metrics.jsonl, one JSON object per logged step.")


def settings(run: Run) -> ReportSettings:
    """The run's ``[report]`` table; its defaults when the pipeline file has none (``run.table``
    gives ``None`` for an absent table)."""
    found = run.table("report")
    return ReportSettings() if found is None else found


# Open progress bars per run (a run is identified by its directory).
_bars: dict[str, Any] = {}


def _console(run: Run) -> bool:
    return not run.quiet and settings(run).progress


def _open_bar(run: Run, key: str, total: int, desc: str, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=True, mininterval=0.25
    )
    _bars[f"{run.directory}:{key}"] = bar
    return bar


def _close_bar(run: Run, key: str) -> None:
    bar = _bars.pop(f"{run.directory}:{key}", None)
    if bar is not None:
        bar.close()


@hookimpl
def flowkit_run_start(run: Run) -> None:
    if not settings(run).log:
        return
    log = run.directory / "metrics.jsonl"
    resumed = run.resumed_from
    kept = []
    # A link, a directory or a damaged file is refused by name, never written through or over.
    text = files.read_text(log, "metrics log") if resumed is not None else None
    for line in (text or "").splitlines():  # a resumed run keeps the lines up to its checkpoint
        try:
            if json.loads(line).get("step", 0) <= resumed:
                kept.append(line + "\n")
        except (ValueError, AttributeError, TypeError):  # a line cut short by a kill: dropped
            continue
    data = "".join(kept).encode("utf-8")
    files.write_atomic(log, lambda handle: handle.write(data))


@hookimpl
def flowkit_stage(run: Run, stage: str, state: str) -> None:
    if not _console(run):
        return
    train = run.table("train")
    if state == "start" and stage == "train" and train is not None:
        _open_bar(run, "train", train.steps, "train", initial=run.resumed_from or 0)
    elif state == "start" and stage == "sample":
        _open_bar(run, "sample", run.table("sample").steps, "sample")
    elif state == "end":
        _close_bar(run, stage)


@hookimpl
def flowkit_train_step(run: Run, step: int, loss: Any) -> None:
    bar = _bars.get(f"{run.directory}:train")
    if bar is not None:
        bar.update(1)


@hookimpl
def flowkit_log(run: Run, step: int, metrics: dict[str, Any]) -> None:
    bar = _bars.get(f"{run.directory}:train")
    if bar is not None and "loss" in metrics:
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
    if settings(run).log:
        files.append_text(run.directory / "metrics.jsonl", json.dumps({"step": step, **metrics}) + "\n")


@hookimpl
def flowkit_sampling_progress(run: Run, done: int, total: int) -> None:
    bar = _bars.get(f"{run.directory}:sample")
    if bar is not None:
        bar.update(done - bar.n)


@hookimpl
def flowkit_samples_ready(run: Run, samples: Any, reference: Any, trajectory: Any) -> None:
    if not settings(run).plots:
        return
    from flowkit_report import plots

    try:
        plots.write_plots(run, samples, reference, trajectory)
    except Exception as exc:  # e.g. matplotlib missing or broken: the run's results are already saved
        plots._report_failure(run, "the plots", exc)


@hookimpl
def flowkit_run_end(run: Run, metrics: dict[str, Any]) -> None:
    for key in [k for k in _bars if k.startswith(f"{run.directory}:")]:
        _bars.pop(key).close()
