"""Sweeps: a grid of overrides × seeds, run as many at once as there are cores, each run a ``flowkit
run`` process with one torch thread, into numbered run directories under one sweep directory.

``sweep.json`` in the sweep directory holds the plan (the file, the fixed overrides, the axes, the
seeds and every run's overrides). Started again with the same plan, a sweep keeps its finished runs
as they are, resumes the unfinished ones with ``flowkit resume`` (from their newest checkpoint) and
starts the ones never begun: a killed sweep loses at most the steps since each run's last checkpoint.
The summary (:mod:`flowkit.engine.compare`) is written when no run is left to do.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from flowkit.config import parse_override
from flowkit.engine.rundir import read_status, write_json
from flowkit.errors import ConfigError, FlowkitError

#: The plan file of a sweep directory.
PLAN = "sweep.json"


@attrs.define(frozen=True)
class Axis:
    """One ``--set KEY=[v1, v2, ...]``: the key and the text of each value (as ``--set`` reads it)."""

    key: str
    values: tuple[str, ...]


def split_list(text: str) -> list[str] | None:
    """The elements of ``[a, b, ...]`` as texts (commas inside brackets, braces or quotes do not
    split); ``None`` when ``text`` is not a bracketed list."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    elements, depth, quote, current = [], 0, "", ""
    for char in text[1:-1]:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            elements.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        elements.append(current.strip())
    return elements


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[Axis]]:
    """The fixed overrides and the axes: a ``--set`` whose value is a list is an axis over its
    elements (a list-valued parameter is fixed by an axis of one: ``model.hidden=[[64, 64]]``)."""
    fixed: list[str] = []
    axes: list[Axis] = []
    for text in overrides:
        key, _, raw = text.partition("=")
        elements = split_list(raw)
        if elements is None:
            parse_override(text)  # a mistake is reported now, naming the --set
            fixed.append(text)
            continue
        if not elements:
            raise ConfigError(f"--set {text}: an axis needs at least one value")
        for element in elements:
            try:
                parse_override(f"{key}={element}")
            except ConfigError as exc:  # named by the whole --set the user wrote
                raise ConfigError(str(exc).replace(f"--set {key}={element}", f"--set {text}", 1)) from None
        if len(set(elements)) != len(elements):
            raise ConfigError(f"--set {text}: a value appears twice in the axis")
        if key.strip() in {a.key for a in axes}:
            raise ConfigError(f"--set {text}: {key.strip()} is already an axis")
        axes.append(Axis(key.strip(), tuple(elements)))
    return fixed, axes


@attrs.define(frozen=True)
class PlannedRun:
    """A run of the sweep: its directory's name and its ``--set`` overrides (the seed's last)."""

    name: str
    overrides: tuple[str, ...]


def plan_runs(fixed: Sequence[str], axes: Sequence[Axis], seeds: Sequence[int]) -> list[PlannedRun]:
    """Every cell of the grid × every seed, cell by cell (the first axis slowest), seeds innermost;
    named ``001``, ``002``, ..."""
    runs: list[PlannedRun] = []
    cells = itertools.product(*[[f"{a.key}={v}" for v in a.values] for a in axes])
    for cell, seed in itertools.product(cells, seeds):
        runs.append(PlannedRun(f"{len(runs) + 1:03d}", (*fixed, *cell, f"run.seed={seed}")))
    return runs


def write_plan(
    directory: Path, file: str, fixed: Sequence[str], axes: Sequence[Axis], seeds: Sequence[int]
) -> dict[str, Any]:
    """Create the sweep directory and its plan, or check that the plan there is this one (a sweep
    started again continues); returns the plan."""
    plan = {
        "file": str(Path(file).resolve()),
        "fixed": list(fixed),
        "axes": [[a.key, list(a.values)] for a in axes],
        "seeds": list(seeds),
        "runs": [{"name": r.name, "set": list(r.overrides)} for r in plan_runs(fixed, axes, seeds)],
    }
    existing = directory / PLAN
    if existing.is_file():
        found = json.loads(existing.read_text(encoding="utf-8"))
        if {k: found.get(k) for k in plan} != plan:
            raise FlowkitError(
                f"{directory} holds another sweep ({existing} differs from this one); "
                "choose another directory with --out"
            )
        return plan
    if directory.exists() and any(directory.iterdir()):
        raise FlowkitError(f"{directory} exists and is no sweep directory; choose another with --out")
    directory.mkdir(parents=True, exist_ok=True)
    write_json(existing, plan)
    return plan


def run_state(directory: Path) -> str:
    """``done``, ``resume`` (begun: continue it with ``flowkit resume``) or ``new`` (never begun, or
    killed before its resolved pipeline was written)."""
    pipeline = directory / "pipeline.toml"
    if not pipeline.is_file() or pipeline.stat().st_size == 0:
        return "new"
    status = read_status(directory)
    return "done" if status is not None and status["state"] == "done" else "resume"


def command_for(run: dict[str, Any], plan: dict[str, Any], root: Path, flags: Sequence[str]) -> list[str]:
    """The ``python -m flowkit`` command line that does ``run`` now (run it, or resume it)."""
    directory = root / run["name"]
    base = [sys.executable, "-m", "flowkit", *flags]
    if run_state(directory) == "resume":
        return [*base, "resume", str(directory), "--quiet"]
    if directory.exists():  # claimed, killed before its pipeline was written: nothing trained
        shutil.rmtree(directory)
    sets = [part for text in run["set"] for part in ("--set", text)]
    return [*base, "run", plan["file"], "--out", str(directory), "--quiet", *sets]


def one_thread_environment() -> dict[str, str]:
    """The environment of a sweep's runs: one intra-op thread each (flowkit's CPU device follows
    OMP_NUM_THREADS), so that ``jobs`` runs share ``jobs`` cores without oversubscribing them."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@attrs.define
class Outcome:
    """What one invocation of a sweep did: the runs it did and how they ended, and the time taken."""

    finished: list[str] = attrs.field(factory=list)
    failed: list[tuple[str, int]] = attrs.field(factory=list)
    kept: list[str] = attrs.field(factory=list)
    run_seconds: dict[str, float] = attrs.field(factory=dict)
    wall_seconds: float = 0.0


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def execute(
    plan: dict[str, Any],
    root: Path,
    jobs: int,
    flags: Sequence[str] = (),
    note: Callable[[str], None] = lambda text: None,
) -> Outcome:
    """Do every run of ``plan`` that is not done, ``jobs`` at a time; each run's output goes to
    ``root/logs/NAME.log``. Ctrl-C (or SIGTERM) stops the runs (each checkpoints) and is raised."""
    outcome = Outcome()
    todo = []
    for run in plan["runs"]:
        if run_state(root / run["name"]) == "done":
            outcome.kept.append(run["name"])
        else:
            todo.append(run)
    (root / "logs").mkdir(exist_ok=True)
    running: dict[str, tuple[subprocess.Popen[bytes], float, Any]] = {}
    started = time.perf_counter()
    main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None  # stops runs as Ctrl-C
    try:
        while todo or running:
            while todo and len(running) < jobs:
                run = todo.pop(0)
                command = command_for(run, plan, root, flags)
                log = open(root / "logs" / f"{run['name']}.log", "ab")  # noqa: SIM115 - closed below
                log.write(f"$ {' '.join(command[1:])}\n".encode())
                log.flush()
                # A session of its own: a Ctrl-C at the terminal reaches the sweep alone, which passes
                # one SIGINT on (a second one would stop a run before its checkpoint).
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=one_thread_environment(),
                    start_new_session=True,
                )
                running[run["name"]] = (process, time.perf_counter(), log)
                note(f"{run['name']}: {command[3 + len(flags)]} ({' '.join(run['set'])})")
            time.sleep(0.1)
            for name, (process, began, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                log.close()
                del running[name]
                outcome.run_seconds[name] = time.perf_counter() - began
                if code == 0:
                    outcome.finished.append(name)
                else:
                    outcome.failed.append((name, code))
                    note(f"{name}: exited with status {code} (see {root / 'logs' / (name + '.log')})")
    except BaseException:
        for process, _, _log in running.values():  # each run checkpoints at its next step and ends
            process.send_signal(signal.SIGINT)
        for process, _, log in running.values():
            process.wait()
            log.close()
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    outcome.wall_seconds = time.perf_counter() - started
    return outcome
