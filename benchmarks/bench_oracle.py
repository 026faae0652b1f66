"""Cost of the exact mixture oracle against a small MLP: is it cheap enough to integrate?

Run from the repository root::

    python benchmarks/bench_oracle.py            # a few seconds on 2 CPU cores
    python benchmarks/bench_oracle.py --quick    # tiny sizes, to check that it runs

A sampler calls the velocity about 100 times on 2,000–10,000 points with one time for the whole
batch (``ts[i].expand(B)``). This times one such call of the ``mixture-oracle`` velocity (preset
"ring", 8 components, VP path; built through the registry) and of a small MLP (3 → 128 → 128 → 2,
SiLU, on ``[x, t]``) on the same points, interleaved: each repetition times a block of ``--calls``
calls of every contender in turn, starting with a different one each time. *× MLP* is the median of
the per-repetition ratios of the oracle's time per call to the MLP's (lower is cheaper; about 0.5 was
measured on a 2-core CPU, and the oracle is meant to cost no more than a few MLP evaluations). The
row "oracle, per-sample t" takes the general path (a training-style batch of per-sample times, here
all equal); ``tests/test_oracle.py`` checks that both paths agree and asserts no timing.
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
from harness.machine import machine_description
from harness.report import RESULTS, format_table, publish
from harness.schedules import interleave
from harness.stats import summarize


@dataclass
class OracleConfig:
    threads: int = 2
    n: int = 4000  # points per call
    calls: int = 20  # calls per timed block
    reps: int = 15  # interleaved repetitions
    preset: str = "ring"
    schedule: str = "vp"
    t: float = 0.5


def quick_config() -> OracleConfig:
    """Tiny sizes (about a second)."""
    return OracleConfig(threads=1, n=64, calls=2, reps=2)


def contenders(cfg: OracleConfig) -> dict[str, Callable[[], Any]]:
    """The calls to time, by name: the oracle's velocity (shared and per-sample times) and the MLP."""
    from flowkit_gaussian.mixture import MixtureOracle

    from flowkit.testing import build_component, make_manager

    manager = make_manager(builtins=["gaussian"], warn=False)
    data = build_component(manager, "dataset", {"kind": "gaussian-mixture", "preset": cfg.preset})
    path = build_component(manager, "path", {"kind": "gaussian", "schedule": {"kind": cfg.schedule}})
    oracle = MixtureOracle.from_components(data, path)
    x = torch.randn(cfg.n, 2, generator=torch.Generator().manual_seed(0))
    shared = torch.tensor(cfg.t).expand(cfg.n)  # stride 0: the oracle's one-time-per-batch path
    per_sample = torch.full((cfg.n,), cfg.t)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(3, 128),
        torch.nn.SiLU(),
        torch.nn.Linear(128, 128),
        torch.nn.SiLU(),
        torch.nn.Linear(128, 2),
    )
    inputs = torch.cat([x, shared[:, None]], 1)
    return {
        "mlp": lambda: mlp(inputs),
        "oracle": lambda: oracle.velocity(x, shared),
        "oracle, per-sample t": lambda: oracle.velocity(x, per_sample),
    }


def run_oracle(cfg: OracleConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every contender (interleaved); returns the results (JSON-serializable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: OracleConfig, log: Callable[[str], None]) -> dict[str, Any]:
    device = torch.device("cpu")
    result: dict[str, Any] = {"config": asdict(cfg), "machine": machine_description(cfg.threads, device)}
    calls = contenders(cfg)

    def block(fn: Callable[[], Any]) -> None:
        for _ in range(cfg.calls):
            fn()

    with torch.no_grad():
        for fn in calls.values():  # warm-up: first-call allocations and dispatch
            block(fn)
        timings = interleave(calls, cfg.reps, lambda fn: measure(lambda: block(fn), device), log)
    clock = result["clock"] = primary_clock(device)  # the thread's CPU time: robust to other load
    seconds = {name: [getattr(t, clock) / cfg.calls for t in values] for name, values in timings.items()}
    mlp = seconds["mlp"]
    result["contenders"] = {
        name: {"seconds_per_call": summarize(values, None if name == "mlp" else mlp)}
        for name, values in seconds.items()
    }
    result["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: ms per call (median, min) and the cost in MLP evaluations."""
    n = result["config"]["n"]
    rows = []
    for name, entry in result["contenders"].items():
        s = entry["seconds_per_call"]
        rows.append([name, n, 1e3 * s["median"], 1e3 * s["min"], s.get("ratio"), s.get("ratio_of_medians")])
    headers = ["contender", "points", "ms per call (median)", "ms (min)", "× MLP", "× MLP (of medians)"]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "oracle.json")
    a = p.parse_args(argv)
    cfg = quick_config() if a.quick else OracleConfig(threads=a.threads, n=a.n, calls=a.calls, reps=a.reps)
    result = run_oracle(cfg, log=lambda m: print(m, flush=True))
    publish(a.out, result, table(result))
    return result


if __name__ == "__main__":
    main()
