"""Data-parallel training speed on the CPU: 1 process against 2 gloo processes (torchrun), same global batch.

Run from the repository root::

    python benchmarks/bench_ddp.py                # ~2-4 min on 2 CPU cores
    python benchmarks/bench_ddp.py --quick        # tiny sizes, to check that it runs

Each configuration is a ``torchrun --standalone`` launch of this script in ``--worker`` mode, which
builds the ``moons`` example (``examples/moons.toml``) with the global ``--batch`` through
``flowkit.engine.build_pipeline``, joins the process group as ``flowkit run`` does
(``flowkit.engine.distributed.start``), and times ``--steps`` calls of
``flowkit.engine.TrainLoop.run`` (so the per-step signal agreement and the log-step loss all-reduce are
timed too) after ``--warmup`` untimed steps, between two barriers. The configurations:

* ``1 proc x 1 thread``: one process, one intra-op thread (flowkit's default on 2 cores);
* ``1 proc x 2 threads``: one process using both cores through intra-op threads;
* ``2 procs x 1 thread``: two DDP ranks, each half the global batch, gradients all-reduced by gloo.

Each of ``--reps`` repetitions runs every configuration once, starting with another one each time;
the table reports the median steps/s and the median of the per-repetition ratios to ``1 proc x 1
thread`` (paired, so load that drifts between repetitions cancels). Writes
``benchmarks/results/ddp.json`` and ``.md``. With 2 cores, 2 processes can at best double the
throughput of one single-threaded process, and only when nothing else runs: the load average is
recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.report import HERE, RESULTS, format_table, write_atomically, write_json
from harness.schedules import rotate
from harness.stats import median, paired_ratios

ROOT = HERE.parent
CONFIGS = {"1 proc x 1 thread": (1, 1), "1 proc x 2 threads": (1, 2), "2 procs x 1 thread": (2, 1)}


def worker(args: argparse.Namespace) -> None:
    """One rank: time ``args.steps`` training steps; rank 0 prints ``{"steps_per_s": ...}``."""
    import torch

    from flowkit.engine import TrainLoop, build_pipeline
    from flowkit.engine import distributed as dist
    from flowkit.registry import PluginManager

    overrides = [
        f"train.batch_size={args.batch}",
        f"train.steps={args.warmup + args.steps}",
        f'run.device={{kind="cpu",threads={args.threads}}}',
        "train.log_every=100",
    ]
    pipe = build_pipeline(ROOT / "examples" / "moons.toml", overrides, PluginManager(warn=False))
    world = dist.start(pipe.run.distributed, pipe.device.device, pipe.run.distributed_timeout)
    loop = TrainLoop(pipe)
    steps = loop.run(args.warmup + args.steps)
    for _ in range(args.warmup):
        next(steps)
    if world.distributed:
        torch.distributed.barrier()
    started = time.perf_counter()
    for _ in steps:
        pass
    if world.distributed:
        torch.distributed.barrier()
    elapsed = time.perf_counter() - started
    if world.is_main:
        print(json.dumps({"steps_per_s": args.steps / elapsed, "threads": torch.get_num_threads()}))
    dist.leave_together()  # as flowkit run does: no rank tears the group down under another
    dist.stop()
    dist.end_process(0)  # as `python -m flowkit` does: no interpreter teardown (gloo can abort there)


def measure(nproc: int, threads: int, args: argparse.Namespace) -> float:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        __file__,
        "--worker",
        f"--threads={threads}",
        f"--batch={args.batch}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    line = [text for text in done.stdout.splitlines() if text.startswith("{")][-1]
    return float(json.loads(line)["steps_per_s"])


def run_ddp(
    args: argparse.Namespace,
    measure: Callable[[int, int, argparse.Namespace], float] = measure,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> dict[str, Any]:
    """Every configuration ``args.reps`` times (each repetition starting with another one), through
    ``measure(nproc, threads, args)``; returns the record written to ``ddp.json``: per configuration
    the steps/s of each repetition, their median and the median of the per-repetition ratios to
    ``1 proc x 1 thread``."""
    load_before = os.getloadavg()
    results: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for rep in range(args.reps):
        for name in rotate(list(CONFIGS), rep):
            results[name].append(measure(*CONFIGS[name], args))
            log(f"rep {rep + 1}: {name}: {results[name][-1]:.1f} steps/s")
    load_after = os.getloadavg()
    base = results["1 proc x 1 thread"]
    summary: dict[str, Any] = {}
    for name, values in results.items():
        ratio = median(paired_ratios(values, base))
        summary[name] = {"steps_per_s": values, "median": median(values), "ratio_to_1x1": ratio}
    import torch

    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "batch": args.batch,
        "steps": args.steps,
        "reps": args.reps,
        "results": summary,
    }


def report(record: dict[str, Any]) -> str:
    """The ``ddp.md`` text: the conditions, then one row per configuration."""
    rows: list[list[Any]] = []
    for name, entry in record["results"].items():
        ratio = entry["ratio_to_1x1"]
        rows.append([name, f"{entry['median']:.1f}", f"{ratio:.2f}" if ratio is not None else "-"])
    table = format_table(["configuration", "steps/s (median)", "ratio to 1x1"], rows)
    before, after = record["load_before"][0], record["load_after"][0]
    header = (
        f"{record['date']}, {record['cpus']} CPUs, torch {record['torch']}, global batch {record['batch']}, "
        f"{record['steps']} steps x {record['reps']} reps; load average {before:.2f} before, "
        f"{after:.2f} after\n\n"
    )
    return header + table + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=256, help="Global batch (the example's).")
    parser.add_argument("--steps", type=int, default=300, help="Timed steps per configuration.")
    parser.add_argument("--warmup", type=int, default=30, help="Untimed steps first.")
    parser.add_argument("--reps", type=int, default=3, help="Repetitions of every configuration.")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: check that it runs.")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.steps, args.warmup, args.reps = 10, 2, 1
    record = run_ddp(args)
    text = report(record)
    write_json(RESULTS / "ddp.json", record)
    write_atomically(RESULTS / "ddp.md", text)
    print(text, end="")


if __name__ == "__main__":
    main()
