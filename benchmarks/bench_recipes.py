"""Training recipes on the two moons: time density x loss weighting, the W2 ratio as training goes.

Run from the repository root::

    python benchmarks/bench_recipes.py            # about 10 minutes on 2 loaded CPU cores
    python benchmarks/bench_recipes.py --quick    # tiny sizes, to check that it runs

Each recipe is CFM on the OT path (MLP 3x128, batch 256, Adam at a constant 2e-3 after 100 warm-up
steps, raw weights: no EMA, so that the weights at every step are the ones sampled) with one time
density (``time = { kind = ... }``: uniform, logit-normal, mode, cosmap; each at its default) and one
weighting (``loss_weight``: none, min-snr, soft-min-snr, edm; gamma 5, sigma_data 1: the moons are
standardised). At a quarter, half, three quarters and all of ``--steps`` the model is sampled (Heun,
20 steps, ``--n`` points) and the exact W2 to as many held-out points is divided by the noise floor.
The default recipe is uniform + none; the table says, for every recipe, the first of those fractions
of the steps at which its ratio is at most the default's at the end. One seed: differences of a few
hundredths are within the seed-to-seed spread. Writes ``benchmarks/reference/recipes-moons.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowkit.api import load_pipeline
from flowkit.engine.components import set_up
from flowkit.engine.evaluate import measure
from flowkit.engine.loop import TrainLoop
from flowkit.engine.sample import draw_samples
from flowkit.registry import PluginManager

REFERENCE = Path(__file__).resolve().parent / "reference"
DENSITIES = ["uniform", "logit-normal", "mode", "cosmap"]
WEIGHTS = ["none", "min-snr", "soft-min-snr", "edm"]


def spec(density: str, weight: str, steps: int, n: int) -> dict[str, Any]:
    return {
        "run": {"seed": 0, "device": "cpu"},
        "data": {"kind": "moons"},
        "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
        "model": {"kind": "mlp", "hidden": [128, 128, 128], "activation": "silu"},
        "loss": {
            "kind": "cfm",
            "time": {"kind": density},
            "loss_weight": weight,
            "snr_gamma": 5.0,
            "sigma_data": 1.0,
        },
        "train": {
            "steps": steps,
            "batch_size": 256,
            "lr": 2e-3,
            "lr_schedule": "constant",
            "warmup_steps": 100,
            "ema_decay": 0.0,
        },
        "sample": {"simulator": "heun", "dynamics": "flow", "steps": 20, "n": n},
        "evaluate": {"metric": "w2", "n": n},
    }


def curve(manager: PluginManager, density: str, weight: str, steps: int, n: int) -> list[float]:
    """The W2 ratio after each quarter of ``steps``."""
    loaded = load_pipeline(spec(density, weight, steps, n), manager=manager)
    pipeline = loaded.pipeline
    set_up(pipeline, "train")
    loop = TrainLoop(pipeline)
    marks = {steps * k // 4 for k in (1, 2, 3, 4)}
    ratios = []
    for step, _, _ in loop.run(steps):
        if step in marks:
            samples = draw_samples(pipeline, n)[1].float().cpu()
            ratios.append(float(measure(pipeline, samples)[0]["ratio_to_floor"]))
    return ratios


def recipe_table(title: str, rows: list[dict[str, Any]], steps: int, target: float) -> list[str]:
    """The markdown table of ``rows`` (each ``time``, ``loss_weight`` and the ``ratios`` at the four
    quarters of ``steps``), with the first quarter at which each reaches ``target``."""
    quarter = steps // 4
    lines = [
        title,
        "",
        f"| time density | loss weight | {quarter} | {2 * quarter} | {3 * quarter} | {steps} | "
        f"reaches the default's {target:.2f} at |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reached = next((k + 1 for k, r in enumerate(row["ratios"]) if r <= target), None)
        when = "not within the steps" if reached is None else f"{25 * reached}% of the steps"
        cells = " | ".join(f"{r:.2f}" for r in row["ratios"])
        lines.append(f"| {row['time']} | {row['loss_weight']} | {cells} | {when} |")
    return lines


def run_recipes(
    file: Path,
    recipes: list[tuple[str, str]],
    order: list[tuple[str, str]],
    steps: int,
    n: int,
    curve_of: Callable[[str, str], list[float]],
    title: str,
) -> None:
    """Measure each ``(time, loss_weight)`` of ``recipes`` with ``curve_of``, saving ``file`` (JSON)
    after each; rows measured before at these ``steps`` and ``n`` are kept (a grid can be measured
    in several sittings). Then the rows in the order of ``order``, the default recipe's (uniform,
    none) final ratio, and the markdown table ``title`` above, beside ``file`` (``.md``) and printed."""
    rows: list[dict[str, Any]] = []
    if file.is_file():
        earlier = json.loads(file.read_text())
        if (earlier["steps"], earlier["n"]) == (steps, n):
            rows = earlier["rows"]
    for density, weight in recipes:
        if any((r["time"], r["loss_weight"]) == (density, weight) for r in rows):
            continue
        rows.append({"time": density, "loss_weight": weight, "ratios": curve_of(density, weight)})
        print(rows[-1], flush=True)
        file.write_text(json.dumps({"steps": steps, "n": n, "rows": rows}, indent=2) + "\n")
    rows.sort(key=lambda r: order.index((r["time"], r["loss_weight"])))
    default = next(r for r in rows if (r["time"], r["loss_weight"]) == ("uniform", "none"))
    target = default["ratios"][-1]  # the default recipe at the end
    result = {"steps": steps, "n": n, "default_final_ratio": target, "rows": rows}
    file.write_text(json.dumps(result, indent=2) + "\n")
    lines = recipe_table(title, rows, steps, target)
    file.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--densities", nargs="+", default=DENSITIES)
    parser.add_argument("--weights", nargs="+", default=WEIGHTS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REFERENCE)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.n = 8, 100
    torch.set_num_threads(1)
    manager = PluginManager(warn=False)
    name = "recipes-moons-quick" if args.quick else "recipes-moons"
    args.out.mkdir(parents=True, exist_ok=True)
    title = (
        f"Recipes on the moons: CFM, OT path, MLP 3x128, {args.steps} steps (constant lr, no EMA), "
        f"W2 / noise floor at n = {args.n}; one seed."
    )
    run_recipes(
        args.out / f"{name}.json",
        [(d, w) for d in args.densities for w in args.weights],
        [(d, w) for d in DENSITIES for w in WEIGHTS],
        args.steps,
        args.n,
        lambda density, weight: curve(manager, density, weight, args.steps, args.n),
        title,
    )


if __name__ == "__main__":
    main()
