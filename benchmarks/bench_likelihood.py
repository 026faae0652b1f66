"""Likelihood speed: flowkit's change-of-variables log-likelihood against a hand-written loop and
flow_matching's ``ODESolver.compute_likelihood``.

Run from the repository root::

    python benchmarks/bench_likelihood.py            # the issue's workload (a minute or two on 2 cores)
    python benchmarks/bench_likelihood.py --quick    # tiny sizes, to check that it runs

The workload: the exact-divergence log-likelihood of ``n = 2000`` held-out two-moons points under an
MLP 3×256 (SiLU) velocity trained briefly with CFM on the OT path, integrated from the data back to
the noise with Euler, 100 steps. Contenders run in one process, interleaved (each repetition starts
with another one), and the table gives median seconds and the median of the per-repetition time
ratios to the raw loop (paired: load that changes between repetitions affects both sides).

* **flowkit** is the real code path: ``flowkit.engine.likelihood.evaluate_likelihood`` with the
  ``[evaluate] likelihood`` settings ``simulator = "euler"``, ``steps = 100`` (what a run's evaluation
  and ``flowkit likelihood`` call).
* **raw**: the same integration written by hand (``x <- x - h u``, ``l <- l + h div u``, the
  divergence by one vector-Jacobian product per dimension), on the same network and time grid.
* **flow_matching**: ``ODESolver(velocity_model).compute_likelihood(..., method="euler",
  exact_divergence=True)``, ``step_size = 1 / steps``; its grid must run from exactly 1.0 (flowkit's
  OT path ends at ``1 - 1e-5``), so its values differ from the others' by about that much.

The **dopri5** rows run flowkit with the adaptive simulator at its default tolerances (and
flow_matching with torchdiffeq's ``dopri5`` at the same ones) and give the error of the mean
log-likelihood against a reference (flowkit's dopri5 at ``rtol = atol = 1e-9`` in float64), with the
function evaluations; the Euler rows carry the same error for comparison.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
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
from workloads import moons_tables


@dataclass
class LikelihoodConfig:
    """What to run; the defaults are the issue's workload."""

    device: str = "cpu"
    threads: int = 2
    n: int = 2000
    steps: int = 100
    reps: int = 5
    train_steps: int = 500
    dopri5: bool = True
    peers: bool = True
    seed: int = 0


def _pipeline(cfg: LikelihoodConfig) -> Any:
    """A briefly trained moons pipeline (flowkit's API) with ``[evaluate] likelihood`` set."""
    from flowkit.api import load_pipeline

    tables = moons_tables(cfg.device, steps=cfg.train_steps, seed=cfg.seed)
    tables["evaluate"]["likelihood"] = {
        "simulator": "euler",
        "steps": cfg.steps,
        "n": cfg.n,
        "batch_size": cfg.n,
    }
    loaded = load_pipeline(tables)
    loaded.train()
    loaded.pipeline.model.eval()
    return loaded.pipeline


class FlowkitLikelihood:
    """``evaluate_likelihood`` with the pipeline's ``[evaluate] likelihood`` settings."""

    def __init__(self, pipeline: Any, points: Tensor, simulator: dict[str, Any] | None = None) -> None:
        import attrs

        from flowkit.config import Location, Structurer

        self.pipeline, self.points = pipeline, points
        self.settings = pipeline.evaluate.likelihood
        if simulator is not None:
            built = Structurer(self._registry(), pipeline.context).build(
                "simulator", simulator, Location("<bench>", ("simulator",))
            )
            self.settings = attrs.evolve(self.settings, simulator=built)
        self.nfe = 0

    @staticmethod
    def _registry() -> Any:
        from flowkit.registry import PluginManager

        return PluginManager(warn=False).registry

    def __call__(self) -> Tensor:
        from flowkit.engine.likelihood import evaluate_likelihood

        report = evaluate_likelihood(self.pipeline, self.settings, data=self.points)
        self.nfe = report.metrics["nfe"]
        return report.log_prob


class RawLikelihood:
    """Euler from ``t_hi`` back to 0 with the exact divergence, written by hand."""

    def __init__(self, network: torch.nn.Module, points: Tensor, steps: int, t_hi: float) -> None:
        self.network, self.points, self.steps, self.t_hi = network, points, steps, t_hi
        self.nfe = steps

    def __call__(self) -> Tensor:
        net, x = self.network, self.points
        n, dim = x.shape
        h = self.t_hi / self.steps
        integral = x.new_zeros(n)
        with torch.no_grad():
            for i in range(self.steps):
                t = x.new_full((n,), self.t_hi - i * h)
                with torch.enable_grad():
                    xr = x.detach().requires_grad_(True)
                    u = net(xr, t)
                    div = x.new_zeros(n)
                    for d in range(dim):
                        (g,) = torch.autograd.grad(u[:, d].sum(), xr, retain_graph=d < dim - 1)
                        div += g[:, d]
                x = x - h * u.detach()
                integral += h * div
            prior = -0.5 * (x.square().sum(dim=1) + dim * math.log(2 * math.pi))
        return (prior - integral).double().cpu()


class FlowMatchingLikelihood:
    """flow_matching's ``ODESolver.compute_likelihood`` (torchdiffeq underneath)."""

    def __init__(self, network: torch.nn.Module, points: Tensor, method: str, steps: int | None) -> None:
        self.network, self.points, self.method, self.steps = network, points, method, steps
        self.nfe = 0

    def __call__(self) -> Tensor:
        from flow_matching.solver import ODESolver

        net, dim = self.network, self.points.shape[1]
        calls = [0]

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            calls[0] += 1
            return net(x, t.expand(x.shape[0]))

        def log_p0(x: Tensor) -> Tensor:
            return -0.5 * (x.square().sum(dim=1) + dim * math.log(2 * math.pi))

        solver = ODESolver(velocity_model=velocity)
        _, log_p = solver.compute_likelihood(
            x_1=self.points,
            log_p0=log_p0,
            step_size=None if self.steps is None else 1.0 / self.steps,
            method=self.method,
            exact_divergence=True,
            time_grid=torch.tensor([1.0, 0.0], device=self.points.device),
        )
        self.nfe = calls[0]
        return log_p.detach().double().cpu()


def reference_log_prob(pipeline: Any, points: Tensor) -> Tensor:
    """flowkit's dopri5 at ``rtol = atol = 1e-9`` in float64: the values errors are measured against."""
    import copy

    from flowkit.engine.likelihood import log_likelihood
    from flowkit.interfaces import ODE
    from flowkit.registry import PluginManager

    cls = PluginManager(warn=False).registry.get("simulator", "dopri5").cls
    simulator = cls(cls.Params(rtol=1e-9, atol=1e-9))
    network = copy.deepcopy(pipeline.model).double()

    class Flow(ODE):
        def drift(self, x: Tensor, t: Tensor) -> Tensor:
            return network(x, t)

    t_lo, t_hi = pipeline.path.t_range
    ts = torch.tensor([t_lo, t_hi], dtype=torch.float64)
    return log_likelihood(Flow(), simulator, pipeline.path.prior_log_prob, points.double(), ts).log_prob.cpu()


def run_likelihood(cfg: LikelihoodConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the benchmark; returns the results (what the JSON holds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: LikelihoodConfig, log: Callable[[str], None]) -> dict[str, Any]:
    from flowkit.engine.likelihood import heldout_data

    device = torch.device(cfg.device)
    result: dict[str, Any] = {"machine": machine_description(cfg.threads, device), "config": asdict(cfg)}
    log(f"training the model ({cfg.train_steps} steps)")
    pipeline = _pipeline(cfg)
    points = heldout_data(pipeline, cfg.n).to(device)
    network = pipeline.network
    t_hi = pipeline.path.t_range[1]
    contenders: dict[str, Any] = {
        "raw": RawLikelihood(network, points, cfg.steps, t_hi),
        "flowkit": FlowkitLikelihood(pipeline, points),
    }
    missing: dict[str, str] = {}
    if cfg.peers and optional_import("flow_matching") is not None:
        contenders["flow_matching"] = FlowMatchingLikelihood(network, points, "euler", cfg.steps)
    elif cfg.peers:
        missing["flow_matching"] = "not installed"
    reference = reference_log_prob(pipeline, points)
    values = {name: c() for name, c in contenders.items()}  # doubles as the warm-up
    log(f"euler, {cfg.steps} steps, n = {cfg.n}: {cfg.reps} repetitions")
    timings = interleave(contenders, cfg.reps, lambda c: measure(c, device), log)
    rows: dict[str, Any] = {}
    for name, c in contenders.items():
        wall, cpu = ([getattr(t, clock) for t in timings[name]] for clock in ("wall", "cpu"))
        raw_wall, raw_cpu = ([getattr(t, clock) for t in timings["raw"]] for clock in ("wall", "cpu"))
        rows[name] = {
            "status": "ok",
            "nfe": c.nfe,
            "seconds": summarize(wall, None if name == "raw" else raw_wall),
            "cpu_seconds": summarize(cpu, None if name == "raw" else raw_cpu),
            "max_abs_diff_vs_raw": float((values[name] - values["raw"]).abs().max()),
            "error_of_mean_vs_reference": float((values[name] - reference).mean()),
        }
    for name, why in missing.items():
        rows[name] = {"status": why}
    result["euler"] = {"steps": cfg.steps, "n": cfg.n, "contenders": rows}
    if cfg.dopri5:
        adaptive: dict[str, Any] = {"flowkit": FlowkitLikelihood(pipeline, points, {"kind": "dopri5"})}
        if "flow_matching" in contenders:
            adaptive["flow_matching"] = FlowMatchingLikelihood(network, points, "dopri5", None)
        values = {name: c() for name, c in adaptive.items()}
        log(f"dopri5 (rtol = atol = 1e-5), n = {cfg.n}: {cfg.reps} repetitions")
        timings = interleave(adaptive, cfg.reps, lambda c: measure(c, device), log)
        result["dopri5"] = {
            "n": cfg.n,
            "contenders": {
                name: {
                    "status": "ok",
                    "nfe": c.nfe,
                    "seconds": summarize([t.wall for t in timings[name]], None),
                    "cpu_seconds": summarize([t.cpu for t in timings[name]], None),
                    "error_of_mean_vs_reference": float((values[name] - reference).mean()),
                    "max_abs_error_vs_reference": float((values[name] - reference).abs().max()),
                }
                for name, c in adaptive.items()
            },
        }
    result["mean_log_likelihood_reference"] = float(reference.mean())
    result["machine"]["load_average_after"] = list(os.getloadavg())
    return result


def tables(result: dict[str, Any]) -> str:
    """The markdown tables of medians and ratios."""
    euler = result["euler"]
    rows = []
    for name, c in euler["contenders"].items():
        if c["status"] != "ok":
            rows.append([name, c["status"], None, None, None, None, None])
            continue
        s = c["seconds"]
        rows.append(
            [
                name,
                s["median"],
                f"{s['min']:.3g}–{s['max']:.3g}",
                1.0 if name == "raw" else s["ratio"],
                1.0 if name == "raw" else c.get("cpu_seconds", {}).get("ratio"),
                c["nfe"],
                f"{c['error_of_mean_vs_reference']:.1e}",
                f"{c['max_abs_diff_vs_raw']:.1e}",
            ]
        )
    headers = [
        "contender",
        "seconds (median)",
        "range",
        "time × raw (paired median)",
        "CPU time × raw (paired median)",
        "nfe",
        "error of mean log p",
        "max |log p - raw|",
    ]
    text = f"### Exact-divergence likelihood, Euler {euler['steps']} steps, n = {euler['n']}\n\n"
    text += format_table(headers, rows) + "\n"
    if "dopri5" in result:
        rows = [
            [
                name,
                c["seconds"]["median"],
                c["nfe"],
                f"{c['error_of_mean_vs_reference']:.1e}",
                f"{c['max_abs_error_vs_reference']:.1e}",
            ]
            for name, c in result["dopri5"]["contenders"].items()
        ]
        text += f"\n### dopri5, rtol = atol = 1e-5, n = {result['dopri5']['n']}\n\n"
        text += format_table(
            ["contender", "seconds (median)", "nfe", "error of mean log p", "max error"], rows
        )
        text += "\n"
    return text


def parse_args(argv: list[str] | None = None) -> tuple[LikelihoodConfig, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=500)
    p.add_argument("--no-dopri5", action="store_true")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    p.add_argument("--out", type=Path, default=RESULTS / "likelihood.json")
    a = p.parse_args(argv)
    cfg = LikelihoodConfig(
        device=a.device,
        threads=a.threads,
        n=a.n,
        steps=a.steps,
        reps=a.reps,
        train_steps=a.train_steps,
        dopri5=not a.no_dopri5,
        peers=not a.no_peers,
    )
    return (quick_config(cfg) if a.quick else cfg), a.out


def quick_config(cfg: LikelihoodConfig | None = None) -> LikelihoodConfig:
    """Tiny sizes (seconds): for the smoke test and for checking an installation."""
    cfg = cfg or LikelihoodConfig()
    cfg.n, cfg.steps, cfg.reps, cfg.train_steps = 64, 4, 2, 5
    return cfg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, out = parse_args(argv)
    result = run_likelihood(cfg, log=lambda m: print(m, flush=True))
    write_json(out, result)
    text = tables(result)
    write_atomically(out.with_suffix(".md"), text)
    print("\n" + text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
