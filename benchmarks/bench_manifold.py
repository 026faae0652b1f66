"""Projected ODE solver speed: flowkit's ``manifold-rk4`` / ``manifold-euler`` against flow_matching's
``RiemannianODESolver`` on the same network, in one process.

Run from the repository root::

    python benchmarks/bench_manifold.py            # the workload below (a minute or so on 2 cores)
    python benchmarks/bench_manifold.py --quick    # tiny sizes, to check that it runs

The workload: ``n = 4000`` points drawn from the uniform distribution on ``S^2`` carried to ``t = 1``
by a ``tangent-mlp`` 3×256 (SiLU; untrained, seeded: speed does not depend on the weights), 100 steps.
For each method (``rk4``, ``euler``) the contenders run interleaved (each repetition starts with
another one); the table gives median seconds and the median of the per-repetition ratios
``flow_matching / flowkit`` (above 1: flowkit is faster). Both integrate the same network at the same
times and agree to float rounding (the column ``max geodesic gap``).

* **flowkit**: ``flowkit_manifolds``' simulator ``simulate`` on the ``flow`` dynamics of the network,
  constrained by the ``geodesic`` path (its projection after every stage and step);
* **flow_matching**: ``RiemannianODESolver(Sphere(), model).sample(x, step_size=None, method=...,
  time_grid=the same grid)`` (``projx = proju = True``, its defaults).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clocks import measure
from harness.machine import machine_description, optional_import
from harness.report import RESULTS, format_table, write_atomically, write_json
from harness.schedules import interleave
from harness.stats import summarize


@dataclass
class ManifoldConfig:
    """What to run; the defaults are the workload of the module docstring."""

    device: str = "cpu"
    threads: int = 2
    n: int = 4000
    steps: int = 100
    hidden: int = 256
    reps: int = 5
    seed: int = 0


def _network(cfg: ManifoldConfig) -> Any:
    from flowkit_manifolds.network import TangentMLP
    from flowkit_manifolds.path import GeodesicPath

    path = GeodesicPath(GeodesicPath.Params(manifold="sphere"))
    torch.manual_seed(cfg.seed)
    params = TangentMLP.Params(hidden=[cfg.hidden] * 3)
    return path, TangentMLP(params, path.manifold, 3).to(cfg.device).eval()


class Flowkit:
    """flowkit's projected simulator on the ``flow`` dynamics of ``network``."""

    def __init__(self, method: str, path: Any, network: torch.nn.Module, x: Tensor, grid: Tensor) -> None:
        from flowkit_manifolds.simulators import ManifoldEuler, ManifoldRK4

        from flowkit.interfaces import ODE

        class Flow(ODE):
            def drift(self, x: Tensor, t: Tensor) -> Tensor:
                return network(x, t)

        self.dynamics = Flow()
        self.dynamics.constraint = path
        self.simulator = {"rk4": ManifoldRK4, "euler": ManifoldEuler}[method]()
        self.x, self.grid = x, grid

    def __call__(self) -> Tensor:
        with torch.no_grad():
            return self.simulator.simulate(self.dynamics, self.x, self.grid)


class FlowMatching:
    """flow_matching's ``RiemannianODESolver`` on the same network."""

    def __init__(self, method: str, network: torch.nn.Module, x: Tensor, grid: Tensor) -> None:
        from flow_matching.solver import RiemannianODESolver
        from flow_matching.utils import ModelWrapper
        from flow_matching.utils.manifolds import Sphere

        class Wrapped(ModelWrapper):
            def forward(self, x: Tensor, t: Tensor, **extras: Any) -> Tensor:
                return self.model(x, t.expand(x.shape[0]))

        self.solver = RiemannianODESolver(Sphere(), Wrapped(network))
        self.method, self.x, self.grid = method, x, grid

    def __call__(self) -> Tensor:
        with torch.no_grad():
            return self.solver.sample(self.x, step_size=None, method=self.method, time_grid=self.grid)


def run_manifold(cfg: ManifoldConfig, log: Any = print) -> dict[str, Any]:
    """Run the benchmark; returns the results (what the JSON holds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: ManifoldConfig, log: Any) -> dict[str, Any]:
    device = torch.device(cfg.device)
    result: dict[str, Any] = {"machine": machine_description(cfg.threads, device), "config": asdict(cfg)}
    path, network = _network(cfg)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    x = path.sample_prior((cfg.n, 3), generator=generator, device=device)
    grid = torch.linspace(0.0, 1.0, cfg.steps + 1, device=device)
    peer = optional_import("flow_matching") is not None and optional_import("torchdiffeq") is not None
    for method in ("rk4", "euler"):
        contenders: dict[str, Any] = {"flowkit": Flowkit(method, path, network, x, grid)}
        if peer:
            contenders["flow_matching"] = FlowMatching(method, network, x, grid)
        values = {name: c() for name, c in contenders.items()}  # doubles as the warm-up
        log(f"{method}, {cfg.steps} steps, n = {cfg.n}: {cfg.reps} repetitions")
        timings = interleave(contenders, cfg.reps, lambda c: measure(c, device), log)
        ours = [t.wall for t in timings["flowkit"]]
        ours_cpu = [t.cpu for t in timings["flowkit"]]
        rows: dict[str, Any] = {
            "flowkit": {
                "status": "ok",
                "seconds": summarize(ours, None),
                "cpu_seconds": summarize(ours_cpu, None),
                "off_sphere": float((values["flowkit"].norm(dim=1) - 1).abs().max()),
            }
        }
        if peer:
            theirs = [t.wall for t in timings["flow_matching"]]
            rows["flow_matching"] = {
                "status": "ok",
                # The ratio is flow_matching's time over flowkit's: above 1, flowkit is faster.
                "seconds": summarize(theirs, ours),
                # The CPU time of the timing thread: under load, wall-clock time is mostly waiting.
                "cpu_seconds": summarize([t.cpu for t in timings["flow_matching"]], ours_cpu),
                "off_sphere": float((values["flow_matching"].norm(dim=1) - 1).abs().max()),
                "max_geodesic_gap": float(
                    path.manifold.dist(values["flowkit"], values["flow_matching"]).max()
                ),
            }
        else:
            rows["flow_matching"] = {"status": "not installed"}
        result[method] = {"steps": cfg.steps, "n": cfg.n, "contenders": rows}
    result["machine"]["load_average_after"] = list(os.getloadavg())
    return result


def tables(result: dict[str, Any]) -> str:
    """The markdown tables of a result."""
    cfg = result["config"]
    parts = [
        f"n = {cfg['n']} points on S^2, tangent-mlp 3x{cfg['hidden']}, {cfg['steps']} steps, "
        f"{cfg['threads']} thread(s), {cfg['reps']} repetitions"
    ]
    for method in ("rk4", "euler"):
        rows = []
        for name, row in result[method]["contenders"].items():
            if row["status"] != "ok":
                rows.append([name, row["status"], None, None, None, None, None, None])
                continue
            seconds, cpu = row["seconds"], row["cpu_seconds"]
            rows.append(
                [
                    name,
                    seconds["median"],
                    f"{min(seconds['values']):.3g}–{max(seconds['values']):.3g}",
                    seconds.get("ratio"),
                    cpu["median"],
                    cpu.get("ratio"),
                    row["off_sphere"],
                    row.get("max_geodesic_gap"),
                ]
            )
        headers = [
            "contender",
            "seconds (median)",
            "range",
            "flow_matching / flowkit (paired median)",
            "CPU seconds (median)",
            "CPU ratio (paired median)",
            "max abs(norm - 1)",
            "max geodesic gap",
        ]
        parts.append(f"### {method}\n\n" + format_table(headers, rows))
    return "\n\n".join(parts) + "\n"


def quick_config(cfg: ManifoldConfig | None = None) -> ManifoldConfig:
    """Tiny sizes (seconds): for the smoke test and for checking an installation."""
    cfg = cfg or ManifoldConfig()
    cfg.n, cfg.steps, cfg.reps, cfg.hidden = 64, 4, 2, 16
    return cfg


def parse_args(argv: list[str] | None = None) -> tuple[ManifoldConfig, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--out", type=Path, default=RESULTS / "manifold.json")
    a = p.parse_args(argv)
    cfg = ManifoldConfig(device=a.device, threads=a.threads, n=a.n, steps=a.steps, reps=a.reps)
    return (quick_config(cfg) if a.quick else cfg), a.out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, out = parse_args(argv)
    result = run_manifold(cfg, log=lambda m: print(m, flush=True))
    write_json(out, result)
    text = tables(result)
    write_atomically(out.with_suffix(".md"), text)
    print("\n" + text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
