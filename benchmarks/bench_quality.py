"""Quality against cost: sample distance as a function of the number of network evaluations.

Run from the repository root::

    python benchmarks/bench_quality.py            # about 1–2 minutes on 2 CPU cores
    python benchmarks/bench_quality.py --quick    # tiny sizes, to check that it runs

Two models, everything through flowkit's own code path (pipeline files built by the registry;
``flowkit.engine.run_pipeline`` to train, ``flowkit.engine.sample.sample`` and
``flowkit.engine.evaluate.evaluate`` for each point):

* **trained**: CFM on the two moons (OT path, MLP 3×256, EMA weights), trained for ``--train-steps``;
* **oracle**: the exact marginal velocity and score of the Gaussian mixture (``mixture-oracle`` on
  ``gaussian-mixture`` data, preset "asymmetric"): what is left is the simulator's error alone.

Each is sampled with Euler and Heun (the flow ODE), Euler–Maruyama (the extension SDE,
``sigma_t = 1 - t``), and DPM-Solver++ (2M) and EDM's sampler on the uniform and on the Karras grid, at
several step counts; the last table gives, per sampler, the fewest evaluations within 1.1× of the
plateau (Heun's W2 at the most steps). The distance is the exact W2 between ``--n`` samples and
as many held-out data points; the noise floor is the W2 between two such draws of data, the
smallest distance a perfect sampler could show at this sample size. Network evaluations are counted
on the network itself (Euler–Maruyama on a trained velocity evaluates it twice per step: once for
the velocity and once inside the score converted from it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.machine import machine_description
from harness.report import RESULTS, format_table, write_atomically, write_json
from quality_plot import plot
from workloads import evaluate_stage, make_manager, make_run, sample_stage, write_pipeline

#: The simulators compared: flowkit ``[sample]`` tables without ``steps``.
SIMULATORS: dict[str, dict[str, Any]] = {
    "euler": {"simulator": "euler", "dynamics": "flow"},
    "heun": {"simulator": "heun", "dynamics": "flow"},
    "euler-maruyama": {
        "simulator": "euler-maruyama",
        "dynamics": {"kind": "extension-sde", "sigma": 1.0, "sigma_schedule": "linear-decay"},
    },
}

# -- samplers built on the Gaussian path's schedule (DPM-Solver++, EDM) -----------------------------------
#: Their rows: on the uniform grid (what suits the near-straight OT flow of 2D data) and on EDM's Karras
#: grid (noise levels 80 to 0.002, rho = 7: made for images). They are measured at more small step counts.
FAST_SAMPLERS: dict[str, dict[str, Any]] = {
    "dpm-solver++": {"simulator": "dpm-solver++", "dynamics": "flow"},
    "edm": {"simulator": "edm", "dynamics": "flow"},
    "dpm-solver++ (karras)": {"simulator": "dpm-solver++", "dynamics": "flow", "grid": "karras"},
    "edm (karras)": {"simulator": "edm", "dynamics": "flow", "grid": "karras"},
}
SIMULATORS.update(FAST_SAMPLERS)
#: The extra step counts of the fast samplers (EDM from OT's t = 0 costs 2 steps - 2 evaluations).
FAST_EXTRA_STEPS = [3, 5, 6]
#: A sampler "reaches the plateau" at the fewest evaluations with W2 <= PLATEAU_FACTOR x the plateau,
#: the W2 of Heun at the most steps (the most accurate solution of the same ODE).
PLATEAU_FACTOR = 1.1


def steps_for(simulator: str, steps: list[int]) -> list[int]:
    """The step counts of ``simulator``: ``steps``, plus the extra small ones for the fast samplers."""
    if simulator not in FAST_SAMPLERS:
        return steps
    return sorted({*steps, *(k for k in FAST_EXTRA_STEPS if k < max(steps))})


def plateau_summary(result: dict[str, Any]) -> str:
    """Markdown: per model and sampler, the fewest network evaluations within ``PLATEAU_FACTOR`` of the
    plateau (Heun's W2 at its most steps), and the W2 there."""
    rows = []
    for model, entry in result["models"].items():
        heun = entry["simulators"].get("heun")
        if not heun:
            continue
        plateau = max(heun, key=lambda p: p["steps"])["distance"]
        for simulator, points in entry["simulators"].items():
            within = [p for p in points if p["distance"] <= PLATEAU_FACTOR * plateau]
            best = min(within, key=lambda p: p["network_evals"]) if within else None
            rows.append(
                [
                    model,
                    simulator,
                    plateau,
                    best["network_evals"] if best else "not reached",
                    best["distance"] if best else None,
                    best["distance"] / plateau if best else None,
                ]
            )
    headers = [
        "model",
        "simulator",
        "plateau W2 (heun, most steps)",
        "fewest evals within 1.1×",
        "W2",
        "× plateau",
    ]
    return format_table(headers, rows)


@dataclass
class QualityConfig:
    """What to run."""

    threads: int = 1
    train_steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128])
    n: int = 2000
    simulators: list[str] = field(default_factory=lambda: list(SIMULATORS))
    models: list[str] = field(default_factory=lambda: ["trained", "oracle"])
    floor_draws: int = 5
    seed: int = 0


def _tables(model: str, cfg: QualityConfig, simulator: str) -> dict[str, Any]:
    sample = {**SIMULATORS[simulator], "steps": cfg.steps[0], "n": cfg.n, "trajectories": 0}
    common = {
        "run": {"seed": cfg.seed, "device": "cpu"},
        "sample": sample,
        "evaluate": {"metric": "w2", "n": cfg.n},
        "report": {"progress": False, "plots": False, "log": False},
    }
    if model == "oracle":
        return {
            **common,
            "data": {"kind": "gaussian-mixture", "preset": "asymmetric"},
            "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
            "model": {"kind": "mixture-oracle"},
        }
    return {
        **common,
        "data": {"kind": "moons"},
        "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
        "model": {"kind": "mlp", "hidden": [256, 256, 256], "activation": "silu"},
        "loss": {"kind": "cfm"},
        "train": {
            "steps": cfg.train_steps,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "lr_schedule": "cosine",
            "warmup_steps": min(200, cfg.train_steps // 10),
            "ema_decay": 0.999 if cfg.train_steps >= 2000 else 0.9,
            "log_every": 500,
        },
    }


def _network_calls(pipeline: Any) -> tuple[Callable[[], int], Any]:
    """A counter of calls to the pipeline's network(s) (the oracle counts its roles' calls)."""
    calls = [0]

    def count(module: Any, inputs: Any) -> None:
        calls[0] += 1

    modules = [pipeline.model] if pipeline.model.trainable else list(pipeline.context.roles.values())
    handles = [m.register_forward_pre_hook(count) for m in modules]
    return (lambda: calls[0]), handles


def _noise_floor(pipeline: Any, cfg: QualityConfig) -> dict[str, Any]:
    """The metric between independent pairs of ``n``-point data draws: mean and std over
    ``cfg.floor_draws`` pairs (``flowkit.engine.evaluate.evaluate`` reports one pair, which fluctuates by
    about ten per cent at n = 2000)."""
    import statistics

    from flowkit.engine import stage_seed

    values = []
    for i in range(cfg.floor_draws):
        generator = torch.Generator().manual_seed(stage_seed(cfg.seed, f"bench-floor-{i}"))
        first = pipeline.dataset.sample(cfg.n, generator=generator)
        second = pipeline.dataset.sample(cfg.n, generator=generator)
        values.append(pipeline.evaluate.metric(first, second))
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def run_quality(cfg: QualityConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (once), then sample and evaluate every simulator at every step count; returns the results."""
    import attrs

    from flowkit.engine import build_pipeline, load_weights, run_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    result: dict[str, Any] = {
        "machine": machine_description(cfg.threads, torch.device("cpu")),
        "config": asdict(cfg),
        "models": {},
    }
    try:
        with tempfile.TemporaryDirectory(prefix="flowkit-quality-") as tmp:
            workdir = Path(tmp)
            manager, _ = make_manager()
            for model in cfg.models:
                entry: dict[str, Any] = {"simulators": {}}
                weights = None
                if model == "trained":
                    file = write_pipeline(workdir, "trained-train", _tables(model, cfg, cfg.simulators[0]))
                    started = time.perf_counter()
                    trained = run_pipeline(
                        build_pipeline(file, manager=manager), manager, out=str(workdir / "train"), quiet=True
                    )
                    weights = trained.directory / "model.pt"
                    entry["train_seconds"] = round(time.perf_counter() - started, 2)
                    entry["final_loss"] = trained.metrics.get("final_loss")
                    log(f"trained {cfg.train_steps} steps in {entry['train_seconds']} s")
                for simulator in cfg.simulators:
                    file = write_pipeline(workdir, f"{model}-{simulator}", _tables(model, cfg, simulator))
                    pipeline = build_pipeline(file, manager=manager)
                    if weights is not None:
                        load_weights(weights, pipeline.model)  # the EMA weights
                        pipeline.model.eval()
                    points = []
                    section = pipeline.sample
                    for steps in steps_for(simulator, cfg.steps):
                        pipeline.sample = attrs.evolve(section, steps=steps)
                        run = make_run(pipeline, manager, workdir / f"{model}-{simulator}-{steps}")
                        calls, handles = _network_calls(pipeline)
                        started = time.perf_counter()
                        samples = sample_stage(run)
                        seconds = time.perf_counter() - started
                        for handle in handles:
                            handle.remove()
                        evaluate_stage(run, samples)
                        m = run.metrics
                        points.append(
                            {
                                "steps": steps,
                                "drift_evals": m["nfe"],
                                "network_evals": calls(),
                                "distance": m["distance"],
                                "noise_floor": m["noise_floor"],
                                "sample_seconds": round(seconds, 4),
                            }
                        )
                        log(
                            f"{model} {simulator} {steps:4d} steps: W2 {m['distance']:.4f} "
                            f"(floor {m['noise_floor']:.4f}), {calls()} network evals"
                        )
                    entry["simulators"][simulator] = points
                entry["noise_floor"] = _noise_floor(pipeline, cfg)
                entry["data"] = "moons" if model == "trained" else "gaussian-mixture (asymmetric)"
                result["models"][model] = entry
    finally:
        torch.set_num_threads(threads)
    return result


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per (model, simulator, steps); the floor is the mean over data-vs-data pairs."""
    rows = []
    for model, entry in result["models"].items():
        floor = entry["noise_floor"]["mean"]
        for simulator, points in entry["simulators"].items():
            for p in points:
                ratio = p["distance"] / floor if floor else None
                rows.append([model, simulator, p["steps"], p["network_evals"], p["distance"], floor, ratio])
    headers = ["model", "simulator", "steps", "network evals", "W2", "noise floor (mean)", "W2 / floor"]
    return format_table(headers, rows)


# ---------------------------------------------------------------------------------------------------
# Couplings (issue 13): independent, OT, Sinkhorn and Schrödinger-bridge CFM, few-step quality and
# straightness. ``python benchmarks/bench_quality.py --couplings``.
# ---------------------------------------------------------------------------------------------------

#: ``[path]``, ``[model]`` and ``[loss]`` of each coupling row (moons, MLP heads 3×256).
COUPLING_ROWS: dict[str, dict[str, Any]] = {
    "independent": {"loss": {"kind": "cfm"}},
    "exact-ot": {"loss": {"kind": "cfm", "coupling": "exact-ot"}},
    "sinkhorn eps=0.1": {"loss": {"kind": "cfm", "coupling": {"kind": "sinkhorn", "epsilon": 0.1}}},
    "sb-cfm sigma=0.3": {
        "path": {"kind": "brownian-bridge", "sigma": 0.3},
        "model": {"kind": "velocity-score"},
        "loss": {"kind": "sb-cfm"},
    },
}


def straightness(pipe: Any, n: int, steps: int = 100) -> dict[str, float]:
    """How straight the learned flow is, from ``n`` Heun trajectories of ``steps`` steps.

    ``length_over_chord``: the mean path length ``sum_k |x_{k+1} - x_k|`` over the mean chord
    ``|x_1 - x_0|`` (1 for straight paths; a ratio of means, as a mean of ratios is dominated by the few
    paths that end near where they start);
    ``velocity_deviation``: mean over the grid and the samples of ``|(x_1 - x_0) - u_t(x_t)|``, how far
    the velocity strays from the chord (0 for straight paths, which Euler with 1 step integrates exactly).
    """
    from flowkit_simulators.dynamics import FlowODE
    from flowkit_simulators.simulators import HeunSimulator

    pipeline = pipe.pipeline
    velocity = pipeline.context.roles["velocity"]
    lo, hi = pipeline.path.t_range
    ts = torch.linspace(lo, hi, steps + 1)
    x0 = pipeline.path.sample_prior((n, *pipeline.dataset.shape), torch.Generator().manual_seed(1))
    with torch.no_grad():
        path = HeunSimulator().simulate_trajectory(FlowODE(velocity=velocity), x0, ts)  # (T + 1, n, D)
        chord = path[-1] - path[0]
        length = (path[1:] - path[:-1]).norm(dim=-1).sum(0)
        deviation = torch.stack(
            [
                (chord - velocity(x, t.expand(n))).norm(dim=-1).mean()
                for x, t in zip(path[:-1], ts[:-1], strict=True)
            ]
        )
    return {
        "length_over_chord": float(length.mean() / chord.norm(dim=-1).mean()),
        "velocity_deviation": float(deviation.mean()),
    }


def run_couplings(cfg: QualityConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train each coupling row like the others, then W2 with Euler at ``cfg.steps`` (and the SB SDE)."""
    import attrs

    import flowkit
    from flowkit.testing import build_component

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    manager, _ = make_manager()
    result: dict[str, Any] = {
        "machine": machine_description(cfg.threads, torch.device("cpu")),
        "config": asdict(cfg),
        "rows": {},
    }
    try:
        for name, tables in COUPLING_ROWS.items():
            spec: dict[str, Any] = {
                "run": {"seed": cfg.seed},
                "data": {"kind": "moons"},
                "path": {"kind": "gaussian"},
                "model": {"kind": "mlp", "hidden": [256, 256, 256]},
                "train": {"steps": cfg.train_steps, "batch_size": cfg.batch_size, "lr": cfg.lr},
                "sample": {"simulator": "euler", "steps": cfg.steps[0], "n": cfg.n, "trajectories": 0},
                "evaluate": {"metric": "w2", "n": cfg.n},
                "report": {"progress": False, "plots": False, "log": False},
                **tables,
            }
            if spec["train"]["steps"] >= 1000:
                spec["train"]["warmup_steps"] = 100
            pipe = flowkit.load_pipeline(spec, manager=manager)
            started = time.perf_counter()
            pipe.train()
            entry: dict[str, Any] = {"train_seconds": round(time.perf_counter() - started, 2), "euler": []}
            section = pipe.pipeline.sample
            for steps in cfg.steps:
                pipe.pipeline.sample = attrs.evolve(section, steps=steps)
                m = pipe.evaluate(pipe.sample(cfg.n))
                entry["euler"].append(
                    {"steps": steps, "distance": m["distance"], "noise_floor": m["noise_floor"]}
                )
                log(f"{name}: euler {steps:3d} steps W2 {m['distance']:.4f} (floor {m['noise_floor']:.4f})")
            if "sb-cfm" in name:
                sigma = pipe.pipeline.path.sigma
                dynamics = build_component(
                    manager,
                    "dynamics",
                    {"kind": "extension-sde", "sigma": sigma},
                    context=pipe.pipeline.context,
                )
                em = build_component(manager, "simulator", "euler-maruyama")
                pipe.pipeline.sample = attrs.evolve(section, simulator=em, dynamics=dynamics, steps=100)
                m = pipe.evaluate(pipe.sample(cfg.n))
                entry["sde_100"] = {"distance": m["distance"], "noise_floor": m["noise_floor"]}
                log(f"{name}: SDE (Euler-Maruyama, 100 steps) W2 {m['distance']:.4f}")
            entry["straightness"] = straightness(pipe, min(cfg.n, 1000))
            log(f"{name}: straightness {entry['straightness']}")
            result["rows"][name] = entry
    finally:
        torch.set_num_threads(threads)
    return result


def couplings_table(result: dict[str, Any]) -> str:
    """Markdown: W2 per Euler step count, the SB SDE, and the two straightness figures, one row each."""
    steps = [p["steps"] for p in next(iter(result["rows"].values()))["euler"]]
    headers = [
        "coupling",
        *[f"W2 Euler {s}" for s in steps],
        "W2 SDE 100",
        "length / chord",
        "mean ‖chord − u‖",
    ]
    rows = []
    for name, entry in result["rows"].items():
        sde = entry.get("sde_100", {}).get("distance")
        st = entry["straightness"]
        rows.append(
            [
                name,
                *[p["distance"] for p in entry["euler"]],
                sde,
                st["length_over_chord"],
                st["velocity_deviation"],
            ]
        )
    floor = next(iter(result["rows"].values()))["euler"][0]["noise_floor"]
    return (
        format_table(headers, rows)
        + f"\n\nNoise floor (data vs data, n = {result['config']['n']}): {floor:.3f}"
    )


def quick_config() -> QualityConfig:
    """Tiny sizes (seconds)."""
    return QualityConfig(train_steps=20, batch_size=64, steps=[1, 4], n=64)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="1: robust to other load (quality, not speed)")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    p.add_argument(
        "--couplings", action="store_true", help="the coupling rows instead (couplings-quality.json)"
    )
    p.add_argument("--few-step", type=Path, help="rows of bench_flowmaps.py quality to draw beside (JSON)")
    p.add_argument("--replot", type=Path, help="draw the figure of this result JSON again; no sampling")
    a = p.parse_args(argv)
    if a.couplings:
        return main_couplings(a)
    few_step = json.loads(a.few_step.read_text()) if a.few_step else None
    if a.replot:
        drawn = json.loads(a.replot.read_text())
        print(f"wrote {plot(drawn, a.out.with_suffix('.png'), few_step)}")
        return dict(drawn)
    cfg = (
        quick_config()
        if a.quick
        else QualityConfig(threads=a.threads, train_steps=a.train_steps, n=a.n, steps=a.steps)
    )
    result = run_quality(cfg, log=lambda m: print(m, flush=True))
    write_json(a.out, result)
    text = table(result) + "\n\n### Fewest evaluations to the plateau\n\n" + plateau_summary(result)
    write_atomically(a.out.with_suffix(".md"), text + "\n")
    png = plot(result, a.out.with_suffix(".png"), few_step)
    print("\n" + text)
    print(f"wrote {a.out}, {a.out.with_suffix('.md')} and {png}")
    return result


def main_couplings(a: argparse.Namespace) -> dict[str, Any]:
    """``--couplings``: the coupling rows (defaults: 3000 steps, Euler at 1, 2, 4, 8 steps)."""
    steps = a.steps if a.steps != [1, 2, 4, 8, 16, 32, 64, 128] else [1, 2, 4, 8]
    cfg = QualityConfig(threads=a.threads, train_steps=a.train_steps, n=a.n, steps=steps)
    if a.quick:
        cfg = QualityConfig(train_steps=20, batch_size=64, steps=[1, 2], n=64)
    out = a.out if a.out != RESULTS / "quality.json" else RESULTS / "couplings-quality.json"
    result = run_couplings(cfg, log=lambda m: print(m, flush=True))
    write_json(out, result)
    text = couplings_table(result)
    write_atomically(out.with_suffix(".md"), text + "\n")
    print("\n" + text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
