"""The ``flowkit`` command line: run, resume, sample, evaluate, validate, plugins, describe, init,
likelihood.

User errors (a bad pipeline file, an unknown plugin, a missing device) exit with status 1 and one
paragraph on stderr, without a traceback; ``--debug`` shows the traceback. A run stopped by SIGINT or
SIGTERM exits with 130 or 143 and says how to continue. Problems of plugins (one that failed to import,
registered a duplicate, ...) are printed as warnings; the rest keeps working.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

import flowkit
from flowkit import cli_sweep
from flowkit.errors import FlowkitError

if TYPE_CHECKING:
    from flowkit.registry import PluginManager

F = TypeVar("F", bound=Callable[..., Any])
# Commands import the registry and the engine (and so torch) when they run: `flowkit --help` and
# argument errors stay fast.


class _State:
    def __init__(self, debug: bool, block: Sequence[str]) -> None:
        self.debug = debug
        self.block = list(block)
        self._manager: PluginManager | None = None

    def manager(self) -> PluginManager:
        from flowkit.registry import PluginManager, parse_block_options

        if self._manager is None:
            self._manager = PluginManager(blocked=parse_block_options(self.block), warn=False)
            for problem in self._manager.problems:
                click.echo(f"flowkit: warning: {problem.message}", err=True)
        return self._manager


def launched_main() -> NoReturn:
    """``python -m flowkit`` (what torchrun starts): :func:`main`, then the end of the process with the
    exit status ``main`` gave (:func:`flowkit.engine.launch.exit_process` where the engine was used)."""
    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if "flowkit.engine.distributed" in sys.modules:  # a command used the engine: maybe a process group
        from flowkit.engine.launch import exit_process

        exit_process(code)
    sys.exit(code)


def _user_errors(func: F) -> F:
    """Print a FlowkitError as one paragraph and exit 1 (with the traceback under --debug); a run
    stopped by a signal exits with ``128 + signal`` (130 for Ctrl-C)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state: _State | None = click.get_current_context().find_object(_State)
        try:
            return func(*args, **kwargs)
        except FlowkitError as exc:
            if state is not None and state.debug:
                raise
            code = getattr(exc, "exit_code", 1)
            click.echo(f"{'Interrupted' if code != 1 else 'Error'}: {_rank_prefix()}{exc}", err=True)
            sys.exit(code)
        except Exception as exc:  # under torchrun: one line naming the rank, and every rank ends
            rank_message = _rank_failure(exc)
            if rank_message is None or (state is not None and state.debug):
                raise
            click.echo(f"Error: {rank_message}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:  # outside a run's own handling (loading, building): nothing written
            if state is not None and state.debug:
                raise
            click.echo("Interrupted: stopped by SIGINT before anything was written", err=True)
            sys.exit(130)

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


cli_sweep.register(main)  # flowkit sweep, flowkit compare
_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="TABLE.KEY=VALUE",
    help="Override a key of the pipeline file, e.g. --set train.steps=100 (repeatable).",
)


def _rank_prefix() -> str:
    """``rank 1 of 2: `` under torchrun; nothing where the engine was not loaded (or outside torchrun)."""
    if "flowkit.engine.distributed" not in sys.modules:
        return ""
    from flowkit.engine.launch import rank_prefix

    return rank_prefix()


def _rank_failure(exc: Exception) -> str | None:
    """The one-line message of an unexpected error on a rank under torchrun; ``None`` outside it."""
    if "flowkit.engine.distributed" not in sys.modules:
        return None
    from flowkit.engine.launch import rank_failure

    return rank_failure(exc)


def _own_run(command: str, run_dir: str, into: str | None, writes: bool = True) -> Any:
    from flowkit.engine.launch import own_run

    return own_run(command, run_dir, into, writes)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_set_option
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default: [run] out).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or console reports.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=None,
    help="Train data-parallel in N processes on this machine: runs `torchrun --standalone "
    "--nproc-per-node N -m flowkit run ...`.",
)
@click.pass_obj
@_user_errors
def run(
    state: _State, file: str, overrides: tuple[str, ...], out: str | None, quiet: bool, nproc: int | None
) -> None:
    """Train, sample and evaluate the pipeline FILE; write a run directory."""
    from flowkit.engine import build_pipeline, run_pipeline
    from flowkit.engine import distributed as dist
    from flowkit.engine.launch import start_run

    manager = state.manager()
    pipeline = build_pipeline(file, overrides, manager)  # errors before any process starts
    start_run(pipeline, file, nproc, sys.argv[1:])
    try:
        result = run_pipeline(pipeline, manager, out=out, quiet=quiet)
        if not dist.current_world().is_main:
            return
    finally:
        dist.stop()
    if not quiet:
        click.echo(_summary(result.metrics))
    click.echo(f"run directory: {result.directory}")


def _summary(metrics: dict[str, Any]) -> str:
    """``w2 = 0.0123 (noise floor 0.0100 ± 0.0010, ratio 1.23), nfe = 100``."""
    floor = f"{metrics['noise_floor']:.4f} ± {metrics['noise_floor_std']:.4f}"
    ratio = metrics["ratio_to_floor"]
    ratio_text = f"{ratio:.2f}" if ratio is not None else "n/a: the noise floor is 0"
    line = f"{metrics['metric']} = {metrics['distance']:.4f} (noise floor {floor}, ratio {ratio_text})"
    return line + (f", nfe = {metrics['nfe']}" if metrics.get("nfe") is not None else "")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@_set_option
@click.option(
    "--out", type=click.Path(file_okay=False), help="New run directory (only to extend a finished run)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or console reports.")
@click.pass_obj
@_user_errors
def resume(state: _State, run_dir: str, overrides: tuple[str, ...], out: str | None, quiet: bool) -> None:
    """Continue the run in RUN_DIR from its newest valid checkpoint.

    An interrupted, killed or diverged run continues in place (on the CPU its final weights and samples
    are bitwise those of an uninterrupted run). --set train.lr=... continues with another learning
    rate; --set train.steps=M extends training, and a finished run is then extended into a new run
    directory (--out, or a numbered sibling).
    """
    from flowkit.engine import distributed as dist
    from flowkit.engine import resume_run
    from flowkit.engine.launch import start_for_resume

    start_for_resume(run_dir)
    try:
        result = resume_run(run_dir, state.manager(), overrides, out=out, quiet=quiet, warn=_warn)
        if not dist.current_world().is_main:
            return
    finally:
        dist.stop()
    if not quiet:
        click.echo(_summary(result.metrics))
    click.echo(f"run directory: {result.directory}")


def _warn(text: str) -> None:
    click.echo(f"flowkit: warning: {text}", err=True)


@main.command(name="sample")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", type=int, help="Number of samples (default: [sample] n).")
@_set_option
@click.option("--out", type=click.Path(dir_okay=False), help="Write the samples here (a new .npy file).")
@click.pass_obj
@_user_errors
def sample_command(
    state: _State, run_dir: str, n: int | None, overrides: tuple[str, ...], out: str | None
) -> None:
    """Sample the trained model of RUN_DIR again, without training.

    Any simulator, dynamics, grid and step count: --set sample.simulator=euler --set sample.steps=8.
    The samples go to a new file in RUN_DIR (samples-<simulator>-<steps>.npy) unless --out names one;
    no file is ever overwritten.
    """
    from flowkit.engine import sample_run

    with _own_run("sample", run_dir, out):
        target, record = sample_run(run_dir, state.manager(), n=n, overrides=overrides, out=out, note=_warn)
    click.echo(
        f"{record['n']} samples ({record['simulator']}, {record['stepping']}, nfe = {record['nfe']}) "
        f"from {record['weights']}"
    )
    click.echo(f"written to {target}")


@main.command(name="evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@_set_option
@click.option(
    "--samples", "samples_file", type=click.Path(dir_okay=False), help="Samples to evaluate (.npy)."
)
@click.option("--out", type=click.Path(dir_okay=False), help="Write the metrics here (a new .json file).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.pass_obj
@_user_errors
def evaluate_command(
    state: _State,
    run_dir: str,
    overrides: tuple[str, ...],
    samples_file: str | None,
    out: str | None,
    as_json: bool,
) -> None:
    """Evaluate the samples of RUN_DIR again, e.g. with --set evaluate.metric=energy.

    The run's samples.npy by default, --samples FILE.npy, or fresh samples when a --set sample.KEY=VALUE
    is given. The metrics go to a new file in RUN_DIR (metrics-evaluate.json) unless --out names one.
    """
    from flowkit.engine import evaluate_run

    with _own_run("evaluate", run_dir, out):
        target, metrics = evaluate_run(
            run_dir, state.manager(), overrides, samples_file=samples_file, out=out, note=_warn
        )
    if as_json:
        click.echo(json.dumps(metrics, indent=2, sort_keys=True))
    elif metrics.get("distance") is None:
        click.echo(f"{metrics['non_finite_samples']} samples are not finite: nothing was measured")
    else:
        click.echo(_summary(metrics))
    click.echo(f"written to {target}", err=as_json)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_set_option
@click.pass_obj
@_user_errors
def validate(state: _State, file: str, overrides: tuple[str, ...]) -> None:
    """Check the pipeline FILE: build every component, train nothing."""
    from flowkit.engine import build_pipeline

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
    stages = [{"name": name, "module": module} for name, module in manager.core_stages().items()]
    if as_json:
        blocked = sorted(manager.blocked)
        listing = {"plugins": rows, "stages": stages, "problems": problems, "blocked": blocked}
        click.echo(json.dumps(listing, indent=2))
        return
    click.echo(f"flowkit  (flowkit {flowkit.__version__}: its own stages, which cannot be blocked)")
    click.echo(f"    {'stages':<10} {', '.join(stage['name'] for stage in stages)}")
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


@main.command()
@click.argument("kind")
@click.argument("name", required=False)
@click.pass_obj
@_user_errors
def describe(state: _State, kind: str, name: str | None) -> None:
    """Print a component's parameters (type, default, doc), or list the components of KIND.

    KIND is a kind of component (schedule, simulator, ...) or a section of the pipeline file (run,
    train, sample, evaluate, report); NAME a registered component, e.g. `flowkit describe schedule vp`.
    """
    from flowkit import docs
    from flowkit.errors import RegistryError, suggest

    registry = state.manager().registry
    sections = docs.sections(registry)
    if kind in sections and kind not in registry.kinds():
        if name is not None:
            raise RegistryError(f"[{kind}] is a section of the pipeline file, not a kind: drop '{name}'")
        click.echo(docs.describe_section(kind, registry), nl=False)
        return
    if kind not in registry.kinds():
        choices = [*registry.kinds(), *sections]
        raise RegistryError(
            f"unknown kind '{kind}'.{suggest(kind, choices)} Known kinds: {', '.join(registry.kinds())}; "
            f"sections: {', '.join(sections)}"
        )
    if name is None:
        click.echo(docs.describe_kind(state.manager(), kind), nl=False)
    else:
        click.echo(docs.describe_component(state.manager(), kind, name), nl=False)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_file", type=click.Path(dir_okay=False), help="Points (N, *D) in a .npy file.")
@click.option(
    "--n", "count", type=click.IntRange(min=1), help="Number of points (default: [evaluate] likelihood n)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key of [evaluate] likelihood, e.g. --set estimator=hutchinson (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--save", type=click.Path(dir_okay=False), help="Write the per-point log-likelihoods (.npy).")
@click.pass_obj
@_user_errors
def likelihood(
    state: _State,
    run_dir: str,
    data_file: str | None,
    count: int | None,
    overrides: tuple[str, ...],
    as_json: bool,
    save: str | None,
) -> None:
    """Log-likelihood of data under the model of the finished run RUN_DIR.

    Without --data, held-out data of the run's dataset (the points [evaluate] likelihood uses).
    """
    from pathlib import Path

    from flowkit.api import open_run
    from flowkit.engine.components import set_up
    from flowkit.engine.likelihood import evaluate_likelihood, load_points, run_settings

    if save is not None and Path(save).exists():
        raise FlowkitError(f"--save {save}: the file exists; choose another name (it is never overwritten)")
    with _own_run("likelihood", run_dir, save, writes=save is not None):
        manager = state.manager()
        done = open_run(run_dir, manager)
        pipeline = done.pipeline.pipeline
        source = str(Path(run_dir) / "pipeline.toml")
        settings = run_settings(pipeline, manager.registry, overrides, source)
        data = None
        if data_file is not None:
            data = load_points(data_file, tuple(pipeline.dataset.shape))
            data = data[:count] if count is not None else data
        elif count is not None:
            import attrs

            settings = attrs.evolve(settings, n=count)
        set_up(pipeline, "likelihood", Path(run_dir))
        report = evaluate_likelihood(pipeline, settings, data, source=data_file or "held-out data")
        if save is not None:  # claimed exclusively: never overwrites, even a file made meanwhile
            from flowkit.engine.rundir import write_new_array

            write_new_array(Path(save), report.log_prob.numpy())
    metrics = report.metrics
    if as_json:
        click.echo(json.dumps(metrics, sort_keys=True))
        return
    line = f"nll = {metrics['nll']:.4f} nats"
    if "nll_std_error" in metrics:
        line += f" ± {metrics['nll_std_error']:.4f}"
    line += f", bits/dim = {metrics['bits_per_dim']:.4f}, n = {metrics['n']}, nfe = {metrics['nfe']}"
    if "exact_nll" in metrics:
        line += f" (exact {metrics['exact_nll']:.4f}, gap {metrics['nll_gap']:+.2e})"
    click.echo(line)
    if save is not None:
        click.echo(f"wrote {save}")


def _templates() -> dict[str, Any]:
    from importlib.resources import files

    folder = files("flowkit") / "templates"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def _template_summary(text: str) -> str:
    first = next((line for line in text.splitlines() if line.startswith("#")), "# ")
    return first.lstrip("# ").strip()


@main.command()
@click.argument("file", default="pipeline.toml", type=click.Path(dir_okay=False))
@click.option("-t", "--template", default="moons", show_default=True, help="Starter pipeline to write.")
@click.option("--list", "list_templates", is_flag=True, help="List the templates and exit.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
@click.pass_obj
@_user_errors
def init(state: _State, file: str, template: str, list_templates: bool, force: bool) -> None:
    """Write a starter pipeline FILE (default: pipeline.toml) from a template."""
    from pathlib import Path

    from flowkit.errors import ConfigError, suggest

    templates = _templates()
    if list_templates:
        width = max(len(name) for name in templates)
        for name in sorted(templates):
            summary = _template_summary(templates[name].read_text(encoding="utf-8"))
            click.echo(f"{name.ljust(width)}  {summary}")
        return
    if template not in templates:
        raise ConfigError(
            f"unknown template '{template}'.{suggest(template, templates)} "
            f"Templates: {', '.join(sorted(templates))} (see `flowkit init --list`)"
        )
    target = Path(file)
    if target.exists() and not force:
        raise ConfigError(f"{target} exists; choose another FILE or pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(templates[template].read_text(encoding="utf-8"), encoding="utf-8")
    click.echo(f"wrote {target} (template '{template}'); check it with `flowkit validate {target}`, ")
    click.echo(f"run it with `flowkit run {target}`")


if __name__ == "__main__":  # `python -m flowkit.cli`, e.g. with an interpreter that has no `flowkit` script
    main()
