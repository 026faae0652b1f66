"""Training recipes on the digits: time density x loss weighting, the unguided Fréchet ratio as training goes.

Run from the repository root::

    python benchmarks/bench_recipes_digits.py            # about 35 minutes on 2 loaded CPU cores
    python benchmarks/bench_recipes_digits.py --quick    # tiny sizes, to check that it runs

Each recipe trains the U-Net of ``examples/digits-guidance.toml`` (CFM on the OT path, batch 128,
``label_dropout = 0.1``, EMA 0.99) with one time density (``[loss] time``: uniform, logit-normal, mode,
cosmap; each at its default) and one weighting (``[loss] loss_weight``; ``sigma_data = 0.5``: the
digits' pixels in [-1, 1]), at a constant learning rate of 2e-3 after 50 warm-up steps, so that the
weights after each quarter of ``--steps`` are those a shorter run would sample. After each quarter the
model is sampled unguided (the asked class, ``scale = 0``; Heun 10 steps, ``--n`` samples, as many
per class) and read by flowkit's reference classifier (``plugins/flowkit_metrics/images.py``): the
Fréchet distance of its features to the held-out digits over that of as many training digits. The
default recipe is uniform + none; the table says, for each recipe, the first quarter at which its
ratio is at most the default's at the end. One seed. Writes
``benchmarks/reference/recipes-digits.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_recipes import run_recipes
from flowkit_metrics.images import image_metrics

from flowkit.api import load_pipeline
from flowkit.config import read_toml
from flowkit.engine.components import set_up
from flowkit.engine.guidance import sample_labels
from flowkit.engine.loop import TrainLoop
from flowkit.engine.sample import draw_samples
from flowkit.registry import PluginManager

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-guidance.toml"
REFERENCE = ROOT / "benchmarks" / "reference"
#: The cells measured: the default first, then each density with no weighting, then two weightings.
RECIPES = [
    ("uniform", "none"),
    ("logit-normal", "none"),
    ("mode", "none"),
    ("cosmap", "none"),
    ("uniform", "edm"),
    ("logit-normal", "min-snr"),
]


def spec(density: str, weight: str, steps: int, n: int) -> dict[str, Any]:
    table = copy.deepcopy(read_toml(EXAMPLE))
    table["loss"] = {"kind": "cfm", "time": {"kind": density}, "loss_weight": weight, "sigma_data": 0.5}
    table["train"].update(steps=steps, lr_schedule="constant", warmup_steps=50, ema_decay=0.99)
    table["sample"].update(n=n, guidance={"scale": 0.0})
    table["evaluate"]["n"] = min(n, int(table["evaluate"]["n"]))
    return table


def curve(manager: PluginManager, density: str, weight: str, steps: int, n: int) -> list[float]:
    """The unguided Fréchet ratio (EMA weights) after each quarter of ``steps``."""
    pipeline = load_pipeline(spec(density, weight, steps, n), manager=manager).pipeline
    set_up(pipeline, "train")
    loop = TrainLoop(pipeline)
    marks = {steps * k // 4 for k in (1, 2, 3, 4)}
    ratios = []
    for step, _, _ in loop.run(steps):
        if step in marks:
            raw = {k: v.clone() for k, v in pipeline.model.state_dict().items()}
            assert loop.ema is not None
            pipeline.model.load_state_dict(loop.ema.state_dict())
            pipeline.model.eval()
            samples = draw_samples(pipeline, n)[1].float().cpu()
            metrics = image_metrics(pipeline.dataset, samples, sample_labels(pipeline, n), seed=0) or {}
            ratios.append(float(metrics["frechet_ratio"]))
            pipeline.model.load_state_dict(raw)  # training goes on from the raw weights
            pipeline.model.train()
            print(f"{density} + {weight}: step {step}: Fréchet ratio {ratios[-1]:.3f}", flush=True)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--n", type=int, default=500, help="samples per mark (a multiple of 10)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REFERENCE)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.n = 8, 50
    torch.set_num_threads(1)
    manager = PluginManager(warn=False)
    name = "recipes-digits-quick" if args.quick else "recipes-digits"
    args.out.mkdir(parents=True, exist_ok=True)
    title = (
        f"Recipes on the digits: the U-Net of digits-guidance.toml, CFM, OT path, {args.steps} steps "
        f"(constant lr, EMA 0.99), unguided Fréchet ratio of {args.n} Heun-10 samples; one seed."
    )
    run_recipes(
        args.out / f"{name}.json",
        RECIPES,
        RECIPES,
        args.steps,
        args.n,
        lambda density, weight: curve(manager, density, weight, args.steps, args.n),
        title,
    )


if __name__ == "__main__":
    main()
