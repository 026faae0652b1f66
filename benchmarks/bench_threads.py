"""Training speed with 1 and 2 intra-op threads, on the machine as it is and beside one busy process.

Run from the repository root::

    python benchmarks/bench_threads.py                  # ~5-10 min on 2 CPU cores
    python benchmarks/bench_threads.py --reference      # also write benchmarks/reference/threads.*
    python benchmarks/bench_threads.py --quick          # tiny sizes, to check that it runs

For each bundled example that trains (``moons``, ``cosine``, ``vp-dsm``, ``ve-dsm``, ``cfm-sde``), the
script times ``--steps`` training steps through flowkit's own code: the example file is built by
``flowkit.engine.build_pipeline`` with ``--set run.device={kind="cpu",threads=K}`` (so the CPU
backend sets the thread count, as ``flowkit run`` does), and ``flowkit.engine.TrainLoop(pipeline)
.step()`` runs the steps, after ``--warmup`` untimed ones. Each count ``K`` of ``--threads`` is timed

* *idle*: on the machine as it is (the JSON records the load average before and after), and
* *loaded*: beside one competing busy process that the script starts itself: a Python loop that
  burns one CPU for at most ``--burn-limit`` seconds (and stops early if this script dies), started
  just before the timed steps and killed right after, in a ``finally`` block.

*Interleaved.* Each of ``--reps`` repetitions times every (example, threads, idle/loaded)
configuration once, starting with another one each time; the table reports medians, and the
slowdown is the median of the per-repetition ratios loaded / idle (paired, so load that drifts
between repetitions cancels). A measurement that would run past ``--max-seconds`` stops there and is
extrapolated to ``--steps`` (marked in the JSON): two threads beside a busy process on two cores can
be 10-150x slower. ``--threads 0`` times flowkit's default thread count (the CPU backend's
``threads = 0``). The column *others' CPUs* says how many CPUs other processes kept busy during
the timed steps (from ``/proc/stat``): where it is well above 0, "idle" was not idle. Writes
``benchmarks/results/threads.json`` and ``.md`` (with ``--reference``, also
``benchmarks/reference/threads.*``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.machine import machine_description
from harness.report import HERE, RESULTS, format_table, write_atomically, write_json
from harness.schedules import rotate
from harness.stats import median, summarize

ROOT = HERE.parent
EXAMPLES = ["moons", "cosine", "vp-dsm", "ve-dsm", "cfm-sde"]
LOADS = ("idle", "loaded")

# One busy process: counts for at most LIMIT seconds, and stops as soon as its parent (this script)
# is gone, so that it never outlives the benchmark even when the benchmark is killed.
BURNER = """
import os, sys, time
limit, parent = float(sys.argv[1]), os.getppid()
end = time.time() + limit
x = 0
while time.time() < end and os.getppid() == parent:
    for _ in range(100_000):
        x += 1
"""


@dataclass
class ThreadsConfig:
    examples: list[str] = field(default_factory=lambda: list(EXAMPLES))
    threads: list[int] = field(default_factory=lambda: [1, 2])
    steps: int = 1000  # timed training steps per measurement
    warmup: int = 20  # untimed steps before them
    reps: int = 3  # interleaved repetitions
    max_seconds: float = 60.0  # a measurement stops here and is extrapolated to `steps`
    burn_limit: float = 600.0  # the busy process exits after this many seconds whatever happens
    settle: float = 0.3  # seconds between starting the busy process and the timed steps


def quick_config() -> ThreadsConfig:
    """Tiny sizes (a few seconds): for the smoke test and for checking an installation."""
    return ThreadsConfig(examples=["moons"], steps=20, warmup=2, reps=2, max_seconds=30.0, settle=0.05)


class Burner:
    """One competing busy process for the duration of a ``with`` block (killed on exit)."""

    def __init__(self, limit: float, settle: float) -> None:
        self.limit, self.settle = limit, settle
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Burner:
        self.process = subprocess.Popen(
            [sys.executable, "-c", BURNER, str(self.limit)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(self.settle)  # let it start up and spin
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)
        self.process = None


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Kill ``process`` (if it still runs) and reap it."""
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    process.wait()


def example_file(name: str) -> Path:
    return ROOT / "examples" / f"{name}.toml"


def build_loop(example: str, threads: int, steps: int) -> Any:
    """The example's :class:`flowkit.engine.TrainLoop`, with the CPU backend's ``threads`` set."""
    from flowkit.engine import TrainLoop, build_pipeline

    overrides = [f'run.device={{kind="cpu",threads={threads}}}', f"train.steps={steps}"]
    return TrainLoop(build_pipeline(example_file(example), overrides))


def busy_cpu_seconds() -> float | None:
    """CPU-seconds all CPUs have spent busy since boot (``/proc/stat``, Linux), else ``None``."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields)
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and its reaped children (the busy process, once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(cfg: ThreadsConfig, example: str, threads: int, loaded: bool) -> dict[str, Any]:
    """Seconds for ``cfg.steps`` training steps of ``example`` (extrapolated past ``max_seconds``).

    ``other_cpus``: how many CPUs other processes kept busy meanwhile, on average (``/proc/stat``'s
    busy time less this process's and the busy process's): the load the "idle" case really had.
    """
    loop = build_loop(example, threads, cfg.steps + cfg.warmup)
    used = torch.get_num_threads()  # what the backend set (threads = 0: flowkit's default)
    for _ in range(cfg.warmup):
        loop.step()
    burner = Burner(cfg.burn_limit, cfg.settle) if loaded else None
    busy, own, wall = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    try:
        if burner is not None:
            burner.__enter__()
        done = 0
        start = time.perf_counter()
        elapsed = 0.0
        while done < cfg.steps:
            loop.step()
            done += 1
            elapsed = time.perf_counter() - start
            if elapsed > cfg.max_seconds:
                break
    finally:
        if burner is not None:
            burner.__exit__()
    busy_after, own_after, wall = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter() - wall
    other = None
    if busy is not None and busy_after is not None and wall > 0:
        other = max(0.0, (busy_after - busy) - (own_after - own)) / wall
    return {
        "seconds": elapsed * cfg.steps / done,
        "steps_done": done,
        "torch_threads": used,
        "other_cpus": other,
    }


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def run_threads(cfg: ThreadsConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every configuration (interleaved); returns the results (JSON-serializable)."""
    before = torch.get_num_threads()
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(before)


def _run(cfg: ThreadsConfig, log: Callable[[str], None]) -> dict[str, Any]:
    device = torch.device("cpu")
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "machine": machine_description(torch.get_num_threads(), device),
    }
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result["machine"]["usable_cpus"] = affinity
    configs = [(e, k, load) for e in cfg.examples for k in cfg.threads for load in LOADS]
    raw: dict[tuple[str, int, str], list[dict[str, Any]]] = {c: [] for c in configs}
    loads = []
    for rep in range(cfg.reps):
        loads.append({"start": load_average()})
        for config in rotate(configs, rep * (len(configs) // cfg.reps or 1)):
            example, threads, load = config
            raw[config].append(measure(cfg, example, threads, load == "loaded"))
        loads[-1]["end"] = load_average()
        log(f"repetition {rep + 1}/{cfg.reps} (load average {loads[-1]['end']})")
    result["load_average_per_repetition"] = loads
    result["machine"]["load_average_after"] = load_average()
    examples: dict[str, Any] = {}
    for example in cfg.examples:
        entry = examples[example] = {}
        for threads in cfg.threads:
            idle, loaded = raw[(example, threads, "idle")], raw[(example, threads, "loaded")]
            idle_s = [m["seconds"] for m in idle]
            loaded_s = [m["seconds"] for m in loaded]
            others = [m["other_cpus"] for m in idle + loaded if m["other_cpus"] is not None]
            entry[str(threads)] = {
                "torch_threads": idle[0]["torch_threads"],
                "other_cpus": {
                    "idle": [m["other_cpus"] for m in idle],
                    "loaded": [m["other_cpus"] for m in loaded],
                },
                "other_cpus_median": median(others),
                "idle": {**summarize(idle_s, None), "steps_done": [m["steps_done"] for m in idle]},
                # ratio: median of the per-repetition slowdowns loaded / idle
                "loaded": {**summarize(loaded_s, idle_s), "steps_done": [m["steps_done"] for m in loaded]},
                "extrapolated": any(m["steps_done"] < cfg.steps for m in idle + loaded),
            }
    result["examples"] = examples
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: per example and thread count, seconds idle and loaded (medians), and the slowdown."""
    steps = result["config"]["steps"]
    rows = []
    for example, entries in result["examples"].items():
        for threads, entry in entries.items():
            label = threads if threads != "0" else f"0 (default: {entry['torch_threads']})"
            if entry["extrapolated"]:
                label += " *"
            idle, loaded = entry["idle"], entry["loaded"]
            others = entry["other_cpus_median"]
            others = None if others is None else round(others, 2)
            rows.append([example, label, idle["median"], loaded["median"], loaded.get("ratio"), others])
    headers = [
        "example",
        "threads",
        f"idle s ({steps} steps)",
        f"loaded s ({steps} steps)",
        "slowdown loaded/idle",
        "others' CPUs",
    ]
    text = format_table(headers, rows)
    if any(e["extrapolated"] for entries in result["examples"].values() for e in entries.values()):
        limit = result["config"]["max_seconds"]
        text += f"\n\n\\* some measurements stopped at {limit:g} s and were extrapolated to {steps} steps"
    return text


def header(result: dict[str, Any]) -> str:
    """One paragraph: when, where and under what load the table was measured."""
    m, cfg = result["machine"], result["config"]
    start, end = m["load_average_1_5_15"], m["load_average_after"]
    load = "unknown" if start is None else f"{start[0]:.2f} at the start, {end[0]:.2f} at the end"
    return (
        f"Measured {m['date']} on {m['cpu']}, {m['usable_cpus']} usable CPUs, torch "
        f"{m['versions']['torch']}; load average (1 min) {load}. {cfg['steps']} training steps per "
        f"measurement after {cfg['warmup']} untimed ones, {cfg['reps']} interleaved repetitions; "
        "loaded: beside one busy Python process. Seconds are medians; the slowdown is the median of the "
        "per-repetition ratios loaded / idle. *Others' CPUs*: how many CPUs other processes (not this "
        "script, not its busy process) kept busy during the timed steps, median over the row's "
        "measurements (from `/proc/stat`): about 0 where *idle* really was idle."
    )


def parse_args(argv: list[str] | None = None) -> tuple[ThreadsConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", nargs="+", default=EXAMPLES, choices=EXAMPLES)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="0: flowkit's default")
    p.add_argument("--steps", type=int, default=1000, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--burn-limit", type=float, default=600.0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--reference", action="store_true", help="also write benchmarks/reference/threads.*")
    p.add_argument("--out", type=Path, default=RESULTS / "threads.json")
    a = p.parse_args(argv)
    if a.quick:
        return quick_config(), a
    cfg = ThreadsConfig(
        examples=a.examples,
        threads=a.threads,
        steps=a.steps,
        warmup=a.warmup,
        reps=a.reps,
        max_seconds=a.max_seconds,
        burn_limit=a.burn_limit,
    )
    return cfg, a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, a = parse_args(argv)
    result = run_threads(cfg, log=lambda m: print(m, flush=True))
    text = header(result) + "\n\n" + table(result)
    outs = [a.out] + ([HERE / "reference" / "threads.json"] if a.reference else [])
    for out in outs:
        write_json(out, result)
        write_atomically(out.with_suffix(".md"), text + "\n")
    print("\n" + text)
    print("wrote " + ", ".join(f"{out} and {out.with_suffix('.md')}" for out in outs))
    return result


if __name__ == "__main__":
    main()
