"""Starting flowkit under torchrun: ``flowkit run --nproc N`` launching the workers, each rank joining
the process group (for ``run`` and ``resume``), one-process commands refusing several processes, and
every rank ending with the exit status the command gave.

The command line (:mod:`flowkit.cli`) keeps only the commands; it imports this module when a command
runs (the engine, and so torch, is not loaded for ``flowkit --help``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
import torch

from flowkit.config import read_toml
from flowkit.engine import distributed as dist
from flowkit.engine.lock import hold_run
from flowkit.engine.records import Pipeline
from flowkit.engine.run import command_line
from flowkit.errors import FlowkitError


def exit_process(code: Any) -> NoReturn:
    """End this process with ``code`` (what ``main`` exited with): a rank that joined a process group
    ends through :func:`flowkit.engine.distributed.end_process` (no interpreter teardown, which can
    abort in gloo's C++ threads)."""
    if dist.joined():
        if not isinstance(code, int):  # click exits with None (success) or a message
            if code is not None:
                click.echo(code, err=True)
            code = 0 if code is None else 1
        dist.end_process(code)
    raise SystemExit(code)


def rank_prefix() -> str:
    """``rank 1 of 2: `` under torchrun (before the process group too), else nothing."""
    found = dist.launched()
    return f"rank {found[0]} of {found[1]}: " if found is not None and found[1] > 1 else ""


def rank_failure(exc: Exception) -> str | None:
    """The one-line message of an unexpected error on a rank under torchrun; ``None`` outside it."""
    found = dist.launched()
    if found is None or found[1] <= 1:  # the group is gone by now: ask the env
        return None
    return str(dist.failure_message(exc, dist.World(*found)))


def one_process(command: str) -> None:
    """Refuse to run ``flowkit COMMAND`` under torchrun with more than one process: sample, evaluate
    and likelihood are one-process commands (rank 0's work in a run), and as N copies they would only
    repeat it N times, racing for the same output file."""
    size = dist.launched_size()
    if size > 1:
        raise FlowkitError(
            f"flowkit {command} runs in one process, but torchrun started {size} (WORLD_SIZE); "
            f"run `flowkit {command}` without torchrun"
        )


def own_run(
    command: str, run_dir: str, into: str | None, writes: bool = True
) -> contextlib.AbstractContextManager[None]:
    """For ``flowkit sample``, ``evaluate`` and ``likelihood``: refuse several processes
    (:func:`one_process`), and hold the run's lock while the command runs when it ``writes`` into the
    run directory (``into``, the file it writes: ``None`` for a new file of the run, else a path)."""
    one_process(command)
    root = Path(run_dir)
    inside = into is None or Path(into).absolute().parent == root.absolute()
    if not writes or not inside or not root.is_dir():  # a missing directory: the command names it
        return contextlib.nullcontext()
    return hold_run(root, command_line())


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``: what each torchrun worker runs."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def start_run(pipeline: Pipeline, file: str, nproc: int | None, argv: Sequence[str]) -> None:
    """For ``flowkit run``: with ``nproc > 1``, hand the command (``argv`` without ``--nproc``) to
    torchrun, which never returns here; under torchrun, join the process group with the pipeline's
    ``[run] distributed`` settings (nothing outside torchrun)."""
    if nproc is not None and nproc > 1:
        dist.launch(nproc, strip_nproc(argv))
    dist.start(pipeline.run.distributed, pipeline.device.device, pipeline.run.distributed_timeout, file)


def start_for_resume(run_dir: str) -> None:
    """Join torchrun's process group for ``flowkit resume`` (nothing outside torchrun), with the
    ``[run] distributed`` settings of the run's ``pipeline.toml``. A rank that cannot read it (a node
    without the run directory) uses ``auto`` on CUDA where there is a GPU."""
    if dist.launched_size() <= 1:
        return
    settings: dict[str, Any] = {}
    try:
        table = read_toml(Path(run_dir) / "pipeline.toml").get("run", {})
        settings = table if isinstance(table, dict) else {}
    except (FlowkitError, OSError):
        pass
    device = settings.get("device", "auto")
    kind = device.get("kind", "auto") if isinstance(device, dict) else str(device)
    cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    dist.start(
        str(settings.get("distributed", "auto")),
        torch.device("cuda" if cuda else "cpu"),
        float(settings.get("distributed_timeout", 300.0)),
        f"{run_dir}/pipeline.toml",
    )
