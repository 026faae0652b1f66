"""The commands ``flowkit sweep`` (a grid of runs, in parallel, resumable) and ``flowkit compare``
(the same table for any finished runs); :func:`register` adds them to the ``flowkit`` group.

Kept apart from :mod:`flowkit.cli` (which imports this module, never the other way round): they share
only the group's state object, whose ``manager()`` and ``block`` they use.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from flowkit.errors import FlowkitError

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(func: F) -> F:
    """A FlowkitError as one line and exit 1; Ctrl-C as one line saying how to go on, exit 130."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = click.get_current_context().obj
        try:
            return func(*args, **kwargs)
        except FlowkitError as exc:
            if getattr(state, "debug", False):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo(
                "Interrupted: the runs were stopped at a checkpoint; run the same command again to resume",
                err=True,
            )
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="TABLE.KEY=VALUE",
    help="An override; a list value is an axis of the grid: --set 'train.lr=[1e-3,2e-3]' (repeatable).",
)
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Seeds per cell ([run] seed, +1, ...).",
)
@click.option(
    "--jobs", type=click.IntRange(min=1), default=None, help="Runs at once (default: the usable cores)."
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Sweep directory (default: [run] out with NAME-sweep)."
)
@click.pass_obj
@_user_errors
def sweep(
    state: Any, file: str, overrides: tuple[str, ...], seeds: int, jobs: int | None, out: str | None
) -> None:
    """Run the grid of FILE's --set axes × --seeds seeds, as many at once as there are cores (one torch
    thread each), into numbered run directories; write summary.md, summary.csv and summary.png.

    Started again, the same command keeps the finished runs and resumes the others.
    """
    import itertools

    from flowkit.engine import build_pipeline
    from flowkit.engine import sweep as sweeps

    fixed, axes = sweeps.split_overrides(overrides)
    manager = state.manager()
    first = None
    for cell in itertools.product(*[[f"{a.key}={v}" for v in a.values] for a in axes]):
        built = build_pipeline(file, [*fixed, *cell], manager)  # every cell's mistakes before any run
        first = first or built
    assert first is not None
    base = first.run.seed
    root = Path(out) if out is not None else Path(first.run.out.replace("{name}", f"{Path(file).stem}-sweep"))
    plan = sweeps.write_plan(root, file, fixed, axes, list(range(base, base + seeds)))
    jobs = jobs or sweeps.usable_cores()
    cells = len(plan["runs"]) // seeds
    click.echo(
        f"sweep {root}: {len(plan['runs'])} runs ({cells} cells × {seeds} seeds), {jobs} at a time", err=True
    )
    flags = [part for name in state.block for part in ("-p", name)]
    outcome = sweeps.execute(plan, root, jobs, flags, note=lambda text: click.echo(text, err=True))
    _record_timing(root, outcome, jobs)
    if outcome.failed:
        names = ", ".join(f"{name} (status {code})" for name, code in outcome.failed)
        raise FlowkitError(
            f"{root}: {len(outcome.failed)} of {len(plan['runs'])} runs did not finish: {names}; their logs "
            f"are in {root / 'logs'}. Run the same command again to resume them (finished runs are kept)"
        )
    table = _write_summary(root, [root / run["name"] for run in plan["runs"]])
    click.echo(table, nl=False)
    total = sum(outcome.run_seconds.values())
    if outcome.run_seconds:
        click.echo(
            f"{len(outcome.run_seconds)} runs in {outcome.wall_seconds:.1f} s; their own times add up to "
            f"{total:.1f} s, / {jobs} cores = {total / jobs:.1f} s",
            err=True,
        )
    click.echo(f"summary: {root / 'summary.md'}, {root / 'summary.csv'}, {root / 'summary.png'}")


def _record_timing(root: Path, outcome: Any, jobs: int) -> None:
    """Append this invocation's times to ``timing.json``: the sweep's wall-clock, each run's."""
    from flowkit.engine.rundir import write_json

    file = root / "timing.json"
    history = json.loads(file.read_text(encoding="utf-8"))["invocations"] if file.is_file() else []
    history.append(
        {
            "jobs": jobs,
            "wall_seconds": round(outcome.wall_seconds, 3),
            "run_seconds": {k: round(v, 3) for k, v in outcome.run_seconds.items()},
            "kept": outcome.kept,
        }
    )
    write_json(file, {"invocations": history})


def _write_summary(root: Path, directories: list[Path]) -> str:
    from flowkit.engine import compare
    from flowkit.engine.rundir import write_atomic

    records = [compare.load_finished(d) for d in directories]
    table = compare.markdown_table(records)
    for name, text in (("summary.md", table), ("summary.csv", compare.csv_table(records))):
        write_atomic(root / name, _writer(text.encode("utf-8")))
    compare.plot(root / "summary.png", records)
    return table


def _writer(data: bytes) -> Callable[[Any], object]:
    return lambda handle: handle.write(data)


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a markdown table.")
@_user_errors
def compare(run_dirs: tuple[str, ...], as_csv: bool) -> None:
    """One table of finished runs: the settings they differ in (less the seed) as cells, and each
    metric as mean ± std over a cell's runs, as `flowkit sweep` writes it."""
    from flowkit.engine import compare as comparing

    records = [comparing.load_finished(d) for d in run_dirs]
    click.echo(comparing.csv_table(records) if as_csv else comparing.markdown_table(records), nl=False)


def register(group: click.Group) -> None:
    """Add ``sweep`` and ``compare`` to the ``flowkit`` command group."""
    group.add_command(sweep)
    group.add_command(compare)
