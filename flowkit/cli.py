"""The ``flowkit`` command line: run, validate, plugins.

User errors (a bad pipeline file, an unknown plugin, a missing device) exit with status 1 and one
paragraph on stderr, without a traceback; ``--debug`` shows the traceback. Problems of plugins (one
that failed to import, registered a duplicate, ...) are printed as warnings; the rest keeps working.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import click

import flowkit
from flowkit.errors import FlowkitError
from flowkit.registry import PluginManager, parse_block_options

F = TypeVar("F", bound=Callable[..., Any])


class _State:
    def __init__(self, debug: bool, block: Sequence[str]) -> None:
        self.debug = debug
        self.block = list(block)
        self._manager: PluginManager | None = None

    def manager(self) -> PluginManager:
        if self._manager is None:
            self._manager = PluginManager(blocked=parse_block_options(self.block), warn=False)
            for problem in self._manager.problems:
                click.echo(f"flowkit: warning: {problem.message}", err=True)
        return self._manager


def _user_errors(func: F) -> F:
    """Print a FlowkitError as one paragraph and exit 1 (with the traceback under --debug)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state: _State = click.get_current_context().find_object(_State)
        try:
            return func(*args, **kwargs)
        except FlowkitError as exc:
            if state is not None and state.debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(flowkit.__version__, prog_name="flowkit")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option(
    "-p",
    "block",
    multiple=True,
    metavar="no:NAME",
    help="Block the plugin NAME (repeatable; FLOWKIT_DISABLE_PLUGINS=a,b does the same).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool, block: tuple[str, ...]) -> None:
    """flowkit: flow matching and diffusion models from TOML pipeline files."""
    ctx.obj = _State(debug, block)


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="TABLE.KEY=VALUE",
    help="Override a key of the pipeline file, e.g. --set train.steps=100 (repeatable).",
)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_set_option
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: [run] out).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or console reports.")
@click.pass_obj
@_user_errors
def run(state: _State, file: str, overrides: tuple[str, ...], out: str | None, quiet: bool) -> None:
    """Train, sample and evaluate the pipeline FILE; write a run directory."""
    from flowkit.pipeline import build_pipeline, run_pipeline

    manager = state.manager()
    pipeline = build_pipeline(file, overrides, manager)
    result = run_pipeline(pipeline, manager, out=out, quiet=quiet)
    metrics = result.metrics
    if not quiet:
        line = f"{metrics['metric']} = {metrics['distance']:.4f} (noise floor {metrics['noise_floor']:.4f}, "
        line += f"ratio {metrics['ratio_to_floor']:.2f}), nfe = {metrics['nfe']}"
        click.echo(line)
    click.echo(f"run directory: {result.directory}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_set_option
@click.pass_obj
@_user_errors
def validate(state: _State, file: str, overrides: tuple[str, ...]) -> None:
    """Check the pipeline FILE: build every component, train nothing."""
    from flowkit.pipeline import build_pipeline

    pipeline = build_pipeline(file, overrides, state.manager())
    parts = [
        f"data={pipeline.dataset.registered_name}",
        f"path={pipeline.path.registered_name}",
        f"model={pipeline.model.registered_name}",
    ]
    if pipeline.loss is not None:
        parts.append(f"loss={pipeline.loss.registered_name}")
    parts += [
        f"simulator={pipeline.sample.simulator.registered_name}",
        f"dynamics={pipeline.sample.dynamics.registered_name}",
    ]
    click.echo(f"{file}: ok ({', '.join(parts)})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@_user_errors
def plugins(state: _State, as_json: bool) -> None:
    """List every plugin, its distribution and version, and the components it provides."""
    manager = state.manager()
    rows = manager.describe_plugins()
    problems = [
        {"plugin": p.plugin.name, "distribution": p.plugin.dist, "message": p.message}
        for p in manager.problems
    ]
    if as_json:
        click.echo(
            json.dumps({"plugins": rows, "problems": problems, "blocked": sorted(manager.blocked)}, indent=2)
        )
        return
    for row in rows:
        click.echo(f"{row['name']}  ({row['distribution']} {row['version']})".rstrip())
        by_kind: dict[str, list[str]] = {}
        for comp in row["components"]:
            by_kind.setdefault(comp["kind"], []).append(comp["name"])
        for kind, names in by_kind.items():
            click.echo(f"    {kind:<10} {', '.join(names)}")
        if not row["components"]:
            click.echo("    (no components: hooks only)")
    for name in sorted(manager.blocked):
        click.echo(f"{name}  (blocked)")
