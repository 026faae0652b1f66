"""Discrete sampling: flowkit's ``discrete-euler`` against flow_matching's ``MixtureDiscreteEulerSolver``
on the same network, in one process.

Run from the repository root::

    python benchmarks/bench_discrete.py            # about a minute on 2 CPU cores
    python benchmarks/bench_discrete.py --quick    # tiny sizes, to check that it runs

The workload is the discrete checkerboard's sampler (``examples/checkerboard-discrete.toml``): ``--n``
sequences of 2 tokens of 32 values from the mask source, ``--steps`` steps of the grid over
``[0, 0.999]``, a ``token-mlp`` (256, 256, 256; embeddings of 32) with the same weights for both
(initialised from seed 0, untrained: the cost of a step does not depend on the weights). flow_matching
is given the network's posterior as probabilities over the 33 states (a zero column for the mask,
which its solver needs to index the mask); flowkit's sampler reads 32. Each repetition samples once
with each contender, starting with a different one each time; *speed-up* is the median of the
per-repetition ratios of flow_matching's time to flowkit's (above 1: flowkit is faster), on the
thread's CPU time. ``tests/test_discrete.py`` checks that the two give bitwise the same tokens (with
flow_matching's draw of a certain value made deterministic); this asserts no timing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clocks import measure, primary_clock
from harness.machine import machine_description, optional_import
from harness.report import RESULTS, format_table, publish
from harness.schedules import interleave
from harness.stats import summarize


@dataclass
class DiscreteConfig:
    threads: int = 2
    n: int = 4000  # sequences per sampling
    steps: int = 64
    reps: int = 7  # interleaved repetitions
    cells: int = 32


def quick_config() -> DiscreteConfig:
    """Tiny sizes (about a second)."""
    return DiscreteConfig(threads=1, n=64, steps=4, reps=2, cells=8)


def contenders(cfg: DiscreteConfig) -> dict[str, Callable[[], Any]]:
    """The samplings to time, by name: flowkit's, and flow_matching's where it is installed."""
    from flowkit_discrete.losses import Posterior
    from flowkit_discrete.nets import TokenMLP
    from flowkit_discrete.path import MixturePath
    from flowkit_discrete.sampler import CTMCDynamics, DiscreteEuler

    path = MixturePath(MixturePath.Params(source="mask"), vocabulary=cfg.cells)
    torch.manual_seed(0)
    network = TokenMLP(data_shape=(2,), output_shape=(2, cfg.cells), states=path.states)
    posterior = Posterior(network)
    dynamics, sampler = CTMCDynamics(posterior=posterior, path=path), DiscreteEuler()
    x0 = path.sample_prior((cfg.n, 2))
    ts = torch.linspace(0.0, path.params.t_max, cfg.steps + 1)
    calls: dict[str, Callable[[], Any]] = {
        "flowkit discrete-euler": lambda: sampler.simulate(
            dynamics, x0, ts, generator=torch.Generator().manual_seed(1)
        )
    }
    if optional_import("flow_matching") is not None:
        from flow_matching.path import MixtureDiscreteProbPath
        from flow_matching.path.scheduler import PolynomialConvexScheduler
        from flow_matching.solver import MixtureDiscreteEulerSolver
        from flow_matching.utils import ModelWrapper

        class Probabilities(ModelWrapper):
            def forward(self, x: torch.Tensor, t: torch.Tensor, **extras: Any) -> torch.Tensor:
                return torch.nn.functional.pad(posterior(x, t).exp(), (0, 1))  # the mask: never predicted

        solver = MixtureDiscreteEulerSolver(
            Probabilities(network),
            MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1.0)),
            vocabulary_size=path.states,
        )

        def flow_matching() -> Any:
            torch.manual_seed(1)
            return solver.sample(x0, step_size=None, time_grid=ts)

        calls["flow_matching MixtureDiscreteEulerSolver"] = flow_matching
    return calls


def run_discrete(cfg: DiscreteConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every contender (interleaved); returns the results (JSON-serializable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: DiscreteConfig, log: Callable[[str], None]) -> dict[str, Any]:
    device = torch.device("cpu")
    result: dict[str, Any] = {"config": asdict(cfg), "machine": machine_description(cfg.threads, device)}
    calls = contenders(cfg)
    with torch.no_grad():
        for fn in calls.values():  # warm-up: first-call allocations and dispatch
            fn()
        timings = interleave(calls, cfg.reps, lambda fn: measure(fn, device), log)
    clock = result["clock"] = primary_clock(device)  # the thread's CPU time: robust to other load
    seconds = {name: [getattr(t, clock) for t in values] for name, values in timings.items()}
    ours = seconds["flowkit discrete-euler"]
    result["contenders"] = {
        name: {"seconds": summarize(values, None if name.startswith("flowkit") else ours)}
        for name, values in seconds.items()
    }
    result["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: seconds per sampling (median, min) and flowkit's speed-up over each peer."""
    cfg = result["config"]
    rows = []
    for name, entry in result["contenders"].items():
        s = entry["seconds"]
        rows.append([name, cfg["n"], cfg["steps"], s["median"], s["min"], s.get("ratio", "-")])
    headers = ["sampler", "sequences", "steps", "s per sampling (median)", "s (min)", "flowkit speed-up"]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "discrete.json")
    a = p.parse_args(argv)
    cfg = quick_config() if a.quick else DiscreteConfig(threads=a.threads, n=a.n, steps=a.steps, reps=a.reps)
    result = run_discrete(cfg, log=lambda m: print(m, flush=True))
    publish(a.out, result, table(result))
    return result


if __name__ == "__main__":
    main()
