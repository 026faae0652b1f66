"""Few-step generation (issue 23): the cost of a MeanFlow training step, and the quality-vs-NFE rows of
MeanFlow, shortcut and reflow runs.

Run from the repository root::

    python benchmarks/bench_flowmaps.py speed               # ~1-2 min on a CPU core
    python benchmarks/bench_flowmaps.py speed --quick       # tiny, to check that it runs
    python benchmarks/bench_flowmaps.py quality RUN ...     # finished runs of the three examples

``speed`` times, on one thread, three contenders on the network of ``examples/moons-meanflow.toml``
(MLP 3 x 256, batch 256):

* ``flowkit meanflow``: ``flowkit.engine.TrainLoop.step`` of that example (data, times, the loss with
  one ``torch.func.jvp``, backward, AdamW, the learning-rate schedule, EMA);
* ``raw jvp``: the same network and loss written by hand in plain PyTorch (moons data from
  scikit-learn-free numpy-free torch draws, a plain forward pass on the rows with ``r = t`` and
  ``torch.func.jvp`` on the others, backward, AdamW, EMA), no flowkit;
* ``raw jvp, whole batch``: the same, with the jvp of every row (what a loop that does not split the
  batch pays; the rows with ``r = t`` multiply their derivative by zero);
* ``flowkit cfm``: ``TrainLoop.step`` of ``examples/moons.toml`` (the same MLP with one time input),
  the cost a MeanFlow step is compared with.

Each repetition runs ``--steps`` steps of each contender, starting with another one each time; the
table gives the median seconds per step on the thread's CPU clock and the median of the paired
ratios. ``quality`` samples each run again at 1, 2 and 4 network evaluations (``flowkit evaluate
RUN --set sample.steps=K``) and writes the rows that ``quality_plot.plot`` draws beside
``bench_quality.py``'s. Results go to ``benchmarks/results/flowmaps-{speed,quality}.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.machine import machine_description

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def moons(n: int, generator: torch.Generator) -> torch.Tensor:
    """Two interleaved half circles with noise 0.05 (the shape of flowkit's ``moons``), in torch."""
    angle = math.pi * torch.rand(n, generator=generator)
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=generator)


def raw_loss(
    net: torch.nn.Module,
    z: torch.Tensor,
    t: torch.Tensor,
    r: torch.Tensor,
    noise: torch.Tensor,
    power: float = 0.5,
    whole_batch: bool = False,
) -> torch.Tensor:
    """The MeanFlow loss by hand on the OT path, weight ``1 / (err + 1e-3)^power``: a plain forward
    pass on the rows with ``r = t`` (target ``v``) and one jvp with tangents ``(v, 1, 0)`` on the rows
    with ``r > t``; ``whole_batch`` takes the jvp of every row instead (the same loss, more work)."""
    x = (1 - t[:, None]) * noise + t[:, None] * z
    v = z - noise

    def jvp_error(rows: torch.Tensor) -> torch.Tensor:
        u, du = torch.func.jvp(
            lambda x, t, r: net(x, t, r=r),
            (x[rows], t[rows], r[rows]),
            (v[rows], torch.ones_like(t[rows]), torch.zeros_like(r[rows])),
        )
        target = (v[rows] + (r - t)[rows][:, None] * du).detach()
        return (u - target).pow(2).mean(1)

    if whole_batch:
        error = jvp_error(torch.arange(len(t)))
    else:
        still, moving = (r == t).nonzero().squeeze(1), (r != t).nonzero().squeeze(1)
        plain = (net(x[still], t[still], r=t[still]) - v[still]).pow(2).mean(1)
        error = torch.cat([plain, jvp_error(moving)])
    return (error / (error.detach() + 1e-3).pow(power)).mean()


class RawMeanFlow:
    """The MeanFlow step of ``examples/moons-meanflow.toml`` by hand: ``t`` uniform, the jump's end
    logit-normal (4, 1.6), sorted, ``r = t`` on 75% of the batch; :func:`raw_loss`; AdamW, EMA 0.999."""

    def __init__(self, network: torch.nn.Module, batch: int, lr: float, whole_batch: bool = False) -> None:
        self.net = network
        self.ema = copy.deepcopy(network).requires_grad_(False)
        self.opt = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=0.0)
        self.batch = batch
        self.whole_batch = whole_batch
        self.gen = torch.Generator().manual_seed(0)

    def step(self) -> None:
        b, g = self.batch, self.gen
        z = moons(b, g)
        a = torch.rand(b, generator=g)
        c = torch.sigmoid(4.0 + 1.6 * torch.randn(b, generator=g))
        t, r = torch.minimum(a, c), torch.maximum(a, c)
        r = torch.where(torch.rand(b, generator=g) < 0.75, t, r)
        noise = torch.randn(b, 2, generator=g)
        loss = raw_loss(self.net, z, t, r, noise, whole_batch=self.whole_batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.net.parameters(), strict=True):
                e.lerp_(p, 0.001)


def contenders(batch: int) -> dict[str, Callable[[], Any]]:
    from flowkit.engine import TrainLoop, build_pipeline
    from flowkit.testing import make_manager

    manager = make_manager(warn=False)
    sets = [f"train.batch_size={batch}", "train.steps=1000000"]
    meanflow = TrainLoop(build_pipeline(ROOT / "examples" / "moons-meanflow.toml", sets, manager))
    cfm = TrainLoop(build_pipeline(ROOT / "examples" / "moons.toml", sets, manager))
    raw = RawMeanFlow(copy.deepcopy(meanflow.pipeline.model), batch, 2e-3)
    whole = RawMeanFlow(copy.deepcopy(meanflow.pipeline.model), batch, 2e-3, whole_batch=True)
    return {
        "flowkit meanflow": meanflow.step,
        "raw jvp": raw.step,
        "raw jvp, whole batch": whole.step,
        "flowkit cfm": cfm.step,
    }


def run_speed(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    steps = {name: step for name, step in contenders(a.batch).items()}
    names = list(steps)
    for step in steps.values():  # warm-up: allocator, autograd graph caches
        for _ in range(a.warmup):
            step()
    per_step: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(a.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            start = time.thread_time()
            for _ in range(a.steps):
                steps[name]()
            per_step[name].append((time.thread_time() - start) / a.steps)
    ratios = {
        "flowkit meanflow / raw jvp": [
            r / f for f, r in zip(per_step["flowkit meanflow"], per_step["raw jvp"], strict=True)
        ],
        "flowkit meanflow / flowkit cfm (cost)": [
            m / c for m, c in zip(per_step["flowkit meanflow"], per_step["flowkit cfm"], strict=True)
        ],
        "raw jvp / flowkit cfm (cost)": [
            m / c for m, c in zip(per_step["raw jvp"], per_step["flowkit cfm"], strict=True)
        ],
        "raw jvp, whole batch / raw jvp (what the split saves)": [
            w / m for w, m in zip(per_step["raw jvp, whole batch"], per_step["raw jvp"], strict=True)
        ],
    }
    return {
        "machine": machine_description(1, torch.device("cpu")),
        "config": {"batch": a.batch, "steps": a.steps, "reps": a.reps, "warmup": a.warmup},
        "seconds_per_step": {k: statistics.median(v) for k, v in per_step.items()},
        "all_seconds_per_step": per_step,
        "median_ratios": {k: statistics.median(v) for k, v in ratios.items()},
        "note": "'flowkit meanflow / raw jvp' is raw time over flowkit time: above 1, flowkit is faster",
    }


def speed_table(result: dict[str, Any]) -> str:
    lines = ["| contender | ms per step (thread CPU, median) |", "|---|---|"]
    lines += [f"| {k} | {1000 * v:.2f} |" for k, v in result["seconds_per_step"].items()]
    lines += ["", "| ratio (median of paired repetitions) | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["median_ratios"].items()]
    return "\n".join(lines) + "\n"


def run_quality(a: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for run in a.runs:
        name = Path(run).name
        rows[name] = []
        for k in a.nfe:
            out = RESULTS / f"flowmaps-{name}-{k}.json"
            out.unlink(missing_ok=True)
            command = ["flowkit", "evaluate", run, "--set", f"sample.steps={k}", "--out", str(out), "--json"]
            subprocess.run(command, check=True, capture_output=True, text=True)
            metrics = json.loads(out.read_text())
            rows[name].append(
                {
                    "network_evals": metrics["nfe"],
                    "distance": metrics["distance"],
                    "noise_floor": metrics["noise_floor"],
                }
            )
    return {"machine": machine_description(1, torch.device("cpu")), "rows": rows}


def quality_table(result: dict[str, Any]) -> str:
    lines = ["| run | NFE | W2 | ratio to floor |", "|---|---|---|---|"]
    for name, points in result["rows"].items():
        for p in points:
            ratio = p["distance"] / p["noise_floor"]
            lines.append(f"| {name} | {p['network_evals']} | {p['distance']:.4f} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    speed = sub.add_parser("speed")
    speed.add_argument("--batch", type=int, default=256)
    speed.add_argument("--steps", type=int, default=20)
    speed.add_argument("--reps", type=int, default=9)
    speed.add_argument("--warmup", type=int, default=10)
    speed.add_argument("--quick", action="store_true")
    quality = sub.add_parser("quality")
    quality.add_argument("runs", nargs="+")
    quality.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4])
    a = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.what == "speed":
        if a.quick:
            a.steps, a.reps, a.warmup = 2, 3, 1
        result, table = run_speed(a), speed_table
    else:
        result, table = run_quality(a), quality_table
    (RESULTS / f"flowmaps-{a.what}.json").write_text(json.dumps(result, indent=1))
    text = table(result)
    (RESULTS / f"flowmaps-{a.what}.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
