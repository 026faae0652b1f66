"""Training and sampling speed of flowkit against a hand-written PyTorch loop and peer libraries.

Run from the repository root::

    python benchmarks/bench_speed.py                 # the full benchmark (a few minutes on 2 cores)
    python benchmarks/bench_speed.py --quick         # tiny sizes, to check that it runs
    python benchmarks/bench_speed.py --breakdown     # also time the pieces of flowkit's training step

Contenders do the same work in one process. On the CPU every repetition runs all of a workload's
contenders at once, in lockstep: each in its own thread, taking turns at every call of its network
(:class:`harness.lockstep.Lockstep`), so each contender's step k runs beside every other's step k and the
machine's changes of speed from one second to the next affect all of them alike. The table reports
medians over repetitions and the median of the per-repetition ratios to the raw loop of the same
repetition. ``--schedule sandwich`` (always on a GPU) runs one block after another instead, each
paired with the raw blocks just before and after it.

* **flowkit** is the real code path: the components come from a pipeline file through the registry
  (``flowkit.engine.build_pipeline``) and the timed code is ``flowkit.engine.train.train`` and
  ``flowkit.engine.sample.sample`` themselves. ``train`` is called once per block with ``steps = warm +
  K``; a plugin's ``flowkit_train_step`` hook reads the clock at step ``warm`` and at step ``warm +
  K``, so the figure is the steady-state loop (its own hook calls included) without the per-call
  set-up (optimizer creation, weight saving). EMA is off (``ema_decay = 0``) and the learning rate
  constant, like the raw loop; the row "flowkit+ema" has the default EMA (0.999) for reference.
* **raw**: a minimal CFM loop written by hand (MLP 3×256 SiLU on ``[x, t]``, AdamW,
  ``x_t = (1 - t) x_0 + t z``, target ``z - x_0``, moons generator inlined).
* **torchcfm** (``ConditionalFlowMatcher(sigma=0)``) and **flow_matching** (``AffineProbPath`` with
  ``CondOTScheduler``, ``ODESolver``) train the same hand-written MLP; **torchdiffeq** integrates it
  with ``odeint`` on the same fixed grid (``euler``; ``heun2`` is Heun's method). No peer has an
  Euler–Maruyama sampler (torchcfm samples through torchdyn, which is not used here).

The contenders are in ``speed_contenders.py``, the breakdown in ``speed_breakdown.py``, the tables
and ``--compare`` in ``speed_tables.py``. The JSON is written after every repetition (atomically), so
a run stopped early leaves one that ``--compare`` reads; the log is for people.

Peak memory is measured after the timings (see :class:`harness.machine.PeakMemory`), on shortened
sampling runs (``--memory-steps``): the peak of a fixed-step sampler does not grow with the number of
steps.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clocks import Timing, measure, primary_clock
from harness.machine import (
    PeakMemory,
    fix_malloc_for_memory_probe,
    machine_description,
    pinned,
    steady_malloc,
)
from harness.report import RESULTS, read_json, write_atomically, write_json
from harness.schedules import SCHEDULES, repetitions
from harness.stats import off_thread, summarize, summarize_clocks
from speed_breakdown import ablation, step_breakdown
from speed_contenders import (
    SpeedConfig,
    count_network_calls,
    sample_contenders,
    train_contenders,
)
from speed_tables import compare, tables

#: Per contender, one :class:`Timing` per block so far (or the reference's paired with each).
Times = dict[str, list[Timing]]


def parse_args(argv: list[str] | None = None) -> tuple[SpeedConfig, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=1, help="1 (flowkit's CPU default on 2 cores): robust to load"
    )
    p.add_argument("--batches", type=int, nargs="+", default=[256, 4096])
    p.add_argument("--block-steps", type=int, nargs="+", default=[100, 30], help="steps per block, per batch")
    p.add_argument("--train-reps", type=int, default=25)
    p.add_argument("--sample-n", type=int, default=10_000)
    p.add_argument("--sample-reps", type=int, default=15)
    p.add_argument("--memory-steps", type=int, default=10)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--breakdown", action="store_true")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds as they are during the timings (page faults come and go)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="lockstep",
        help="lockstep: contenders at once, in turns at every network call (CPU); sandwich: one block "
        "after another, each between two raw blocks (always on a GPU)",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="let the threads run on any CPU (by default the run is pinned to the last --threads CPUs)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--out", type=Path, default=RESULTS / "speed.json")
    p.add_argument(
        "--compare",
        type=Path,
        nargs=2,
        metavar="JSON",
        help="print two runs' ratios side by side and exit (their JSONs, complete or from a stopped run)",
    )
    a = p.parse_args(argv)
    if a.out.is_dir():  # the JSON is replaced atomically, which a folder cannot be
        p.error(f"--out {a.out}: a folder; give the JSON file to write, e.g. --out {a.out / 'speed.json'}")
    if a.compare:
        first, second = (read_json(f) for f in a.compare)
        print(compare(first, second))
        raise SystemExit(0)
    cfg = SpeedConfig(
        device=a.device,
        threads=a.threads,
        batches=a.batches,
        block_steps=a.block_steps,
        train_reps=a.train_reps,
        sample_n=a.sample_n,
        sample_reps=a.sample_reps,
        memory=not a.no_memory,
        memory_steps=a.memory_steps,
        peers=not a.no_peers,
        breakdown=a.breakdown,
        steady_malloc=not a.default_malloc,
        schedule=a.schedule,
        pin=not a.no_pin,
    )
    if a.quick:
        cfg = quick_config(cfg)
    return cfg, a.out


def quick_config(cfg: SpeedConfig | None = None) -> SpeedConfig:
    """Tiny sizes (seconds): for the smoke test and for checking an installation."""
    cfg = cfg or SpeedConfig()
    cfg.batches, cfg.block_steps, cfg.train_reps = [32, 64], [3, 2], 2
    cfg.sample_n, cfg.sample_reps, cfg.memory_steps = 64, 2, 2
    cfg.sample_steps = {"euler": 4, "heun": 2, "euler-maruyama": 4}
    return cfg


def run_speed(
    cfg: SpeedConfig,
    log: Callable[[str], None] = print,
    partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the results (what the JSON holds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_speed(cfg, log, partial or (lambda result: None))
    finally:
        torch.set_num_threads(threads)


def _run_speed(
    cfg: SpeedConfig, log: Callable[[str], None], partial: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    device = torch.device(cfg.device)
    result: dict[str, Any] = {
        "machine": machine_description(cfg.threads, device),
        "config": asdict(cfg),
        "clock": primary_clock(device),
        # False until the run ends: a result written after a repetition holds the ones so far
        "complete": False,
        "train": {},
        "sample": {},
    }
    if len(cfg.block_steps) != len(cfg.batches):
        raise ValueError(f"block_steps {cfg.block_steps} must give one block length per batch {cfg.batches}")
    pin = device.type == "cpu" and cfg.pin
    with (
        tempfile.TemporaryDirectory(prefix="flowkit-bench-") as tmp,
        pinned(cfg.threads) if pin else contextlib.nullcontext() as cpus,
    ):
        result["machine"]["pinned_cpus"] = cpus
        workdir = Path(tmp)
        memory_jobs: list[Callable[[], None]] = []
        if cfg.steady_malloc and device.type == "cpu":
            result["machine"]["steady_malloc"] = steady_malloc()
        # -- training ------------------------------------------------------------------------------
        for batch, k in zip(cfg.batches, cfg.block_steps, strict=True):
            log(f"train, batch {batch}: {cfg.train_reps} blocks of {k} steps per contender")
            contenders, missing = train_contenders(batch, cfg, workdir)
            result["machine"]["device_backend"] = contenders["flowkit"].device_backend
            for contender in contenders.values():  # warm-up
                contender.block(max(2, k // 5))

            def train_progress(
                timings: Times, paired: Times, batch: int = batch, k: int = k, missing: Any = missing
            ) -> None:
                result["train"][str(batch)] = _train_entry(k, timings, paired, missing)
                partial(result)  # what is measured so far survives a run stopped later

            timings, paired = repetitions(
                contenders,
                [c.network for c in contenders.values()],
                cfg.schedule,
                device,
                cfg.train_reps,
                lambda c, k=k: c.block(k),
                log,
                each=train_progress,
            )
            entry = result["train"][str(batch)] = _train_entry(k, timings, paired, missing)
            if cfg.memory:
                for name, contender in contenders.items():
                    memory_jobs.append(
                        lambda c=contender, e=entry["contenders"][name], k=k: _peak(c.block, k, e, device)
                    )
        # -- sampling ------------------------------------------------------------------------------
        for simulator in cfg.simulators:
            steps = cfg.sample_steps[simulator]
            log(f"sample, {simulator} {steps} steps, n = {cfg.sample_n}: {cfg.sample_reps} runs each")
            contenders, missing, networks = sample_contenders(simulator, cfg, workdir)
            calls, outputs = {}, {}
            for name, c in contenders.items():  # doubles as the warm-up
                calls[name] = count_network_calls(
                    networks[name], lambda c=c, name=name, out=outputs, s=steps: out.__setitem__(name, c(s))
                )
            differences = {
                name: float((outputs[name].cpu() - outputs["raw"].cpu()).abs().max()) for name in contenders
            }
            fixed = {"steps": steps, "n": cfg.sample_n, "calls": calls, "differences": differences}

            def sample_progress(
                timings: Times, paired: Times, key: str = simulator, fixed: Any = fixed, why: Any = missing
            ) -> None:
                result["sample"][key] = _sample_entry(fixed, timings, paired, why)
                partial(result)

            timings, paired = repetitions(
                contenders,
                list(networks.values()),
                cfg.schedule,
                device,
                cfg.sample_reps,
                lambda c, s=steps: measure(lambda: c(s), device),
                log,
                each=sample_progress,
            )
            entry = result["sample"][simulator] = _sample_entry(fixed, timings, paired, missing)
            if cfg.memory:
                for name, contender in contenders.items():
                    memory_jobs.append(
                        lambda c=contender, e=entry["contenders"][name]: _peak(c, cfg.memory_steps, e, device)
                    )
        # -- memory, after every timing (the probe changes the allocator) -----------------------------
        if cfg.memory:
            log("peak memory")
            result["machine"]["malloc_fixed_threshold"] = (
                fix_malloc_for_memory_probe() if device.type == "cpu" else None
            )
            for job in memory_jobs:
                job()
        if cfg.breakdown:
            log("breakdown of flowkit's training step")
            result["breakdown"] = {str(b): step_breakdown(b, cfg, workdir) for b in cfg.batches}
            result["ablation"] = {
                str(b): ablation(b, k, cfg, workdir, log)
                for b, k in zip(cfg.batches, cfg.block_steps, strict=True)
            }
    result["machine"]["load_average_after"] = list(os.getloadavg())
    result["complete"] = True
    return result


def _train_entry(k: int, timings: Times, paired: Times, missing: dict[str, str]) -> dict[str, Any]:
    """A training workload's results from its blocks so far."""
    entry: dict[str, Any] = {"block_steps": k, "contenders": {}}
    for name in timings:
        rates = summarize_clocks(timings[name], paired.get(name), k)
        entry["contenders"][name] = {
            "status": "ok",
            "steps_per_s": rates["wall"],
            "steps_per_cpu_s": rates["cpu"],
            "off_thread": off_thread(timings[name]),
        }
    for name, why in missing.items():
        entry["contenders"][name] = {"status": why}
    return entry


def _sample_entry(
    fixed: dict[str, Any], timings: Times, paired: Times, missing: dict[str, str]
) -> dict[str, Any]:
    """A sampling workload's results from its runs so far; ``fixed`` has what the warm-up measured
    (``steps``, ``n``, each contender's network ``calls`` and ``differences`` from the raw samples)."""
    entry: dict[str, Any] = {"steps": fixed["steps"], "n": fixed["n"], "contenders": {}}
    for name in timings:
        rates = summarize_clocks(timings[name], paired.get(name), fixed["n"])
        entry["contenders"][name] = {
            "status": "ok",
            "network_evals": fixed["calls"][name],
            "max_abs_diff_vs_raw": fixed["differences"][name],
            "seconds": summarize([t.wall for t in timings[name]], None),
            "cpu_seconds": summarize([t.cpu for t in timings[name]], None),
            "samples_per_s": rates["wall"],
            "samples_per_cpu_s": rates["cpu"],
            "off_thread": off_thread(timings[name]),
        }
    for name, why in missing.items():
        entry["contenders"][name] = {"status": why}
    return entry


def _peak(work: Callable[[int], Any], k: int, entry: dict[str, Any], device: torch.device) -> None:
    with PeakMemory(device) as probe:
        work(k)
    entry["peak_mib"] = probe.mib
    entry["peak_method"] = probe.method


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, out = parse_args(argv)

    def write(result: dict[str, Any]) -> None:
        result["machine"]["load_average_now"] = list(os.getloadavg())
        write_json(out, result)
        write_atomically(out.with_suffix(".md"), tables(result))

    # written after every repetition too (atomically): a run stopped early leaves a readable JSON
    result = run_speed(cfg, log=lambda m: print(m, flush=True), partial=write)
    write(result)
    print("\n" + tables(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
