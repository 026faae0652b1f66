"""Autoguidance on a 2D mixture: the share of samples near a mode, with and without a weaker guide.

Run from the repository root::

    python benchmarks/bench_autoguidance.py            # a few minutes on 2 CPU cores
    python benchmarks/bench_autoguidance.py --quick    # tiny sizes, to check that it runs

The data is flowkit's ``eight-gaussians`` (centres on a circle of radius sqrt(2), std 0.1). The model
is CFM on the OT path with an MLP trained for ``--steps``; the guide is the same pipeline trained
``--guide-steps`` only, a deliberately short run (Karras et al. 2024: the guide is a weaker model of
the same task). Both are ordinary run directories; the guided samples come from the ``auto`` guider
naming the guide run, at several weights ``w`` (flowkit's weight, Karras' ``w_K = 1 + w``; ``w = 0``
is the model alone). Each row gives the share of ``--n`` samples within 3 std of a centre, and the
exact W2 to as many held-out points divided by the noise floor (the W2 of two draws of data).
Writes ``benchmarks/reference/autoguidance.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowkit.api import load_pipeline
from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoints import load_weights
from flowkit.engine.evaluate import measure
from flowkit.engine.sample import draw_samples
from flowkit.registry import PluginManager

REFERENCE = Path(__file__).resolve().parent / "reference"
NOISE = 0.1


def spec(steps: int, n: int, seed: int = 0) -> dict[str, Any]:
    return {
        "run": {"seed": seed, "device": "cpu"},
        "data": {"kind": "eight-gaussians", "noise": NOISE},
        "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
        "model": {"kind": "mlp", "hidden": [128, 128, 128], "activation": "silu"},
        "loss": {"kind": "cfm"},
        "train": {"steps": steps, "batch_size": 256, "lr": 2e-3, "lr_schedule": "cosine", "ema_decay": 0.99},
        "sample": {"simulator": "heun", "dynamics": "flow", "steps": 20, "n": n},
        "evaluate": {"metric": "w2", "n": n},
    }


def near_a_mode(samples: torch.Tensor, centres: torch.Tensor) -> float:
    """The share of ``samples (n, 2)`` within 3 std of their nearest centre."""
    return float((torch.cdist(samples, centres).min(dim=1).values <= 3 * NOISE).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--guide-steps", type=int, default=150)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REFERENCE)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.guide_steps, args.n, args.weights = 40, 10, 200, [0.0, 1.0]
    torch.set_num_threads(1)
    manager = PluginManager(warn=False)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = load_pipeline(spec(args.steps, args.n), manager=manager)
        model_run = model.run(out=Path(tmp) / "model").directory
        guide = load_pipeline(spec(args.guide_steps, args.n), manager=manager)
        guide_run = guide.run(out=Path(tmp) / "guide")
        guide_dir = guide_run.directory
        samples_at: dict[float, torch.Tensor] = {}
        for w in args.weights:
            table = spec(args.steps, args.n)
            table["sample"]["guidance"] = {"kind": "auto", "scale": w, "guide": str(guide_dir)}
            pipeline = build_pipeline(table, (), manager)
            load_weights(model_run / "model.pt", pipeline.network)
            pipeline.network.eval()
            samples = draw_samples(pipeline, args.n)[1].float().cpu()
            metrics = measure(pipeline, samples)[0]
            centres = pipeline.dataset.centres()
            rows.append(
                {
                    "w": w,
                    "near_mode": near_a_mode(samples, centres),
                    "w2": metrics["distance"],
                    "w2_ratio": metrics["ratio_to_floor"],
                }
            )
            samples_at[w] = samples
            print(rows[-1], flush=True)
        guide_samples = torch.from_numpy(np.load(guide_dir / "samples.npy"))  # the guide's own run
        guide_row = {
            "near_mode": near_a_mode(guide_samples, centres),
            "w2_ratio": guide_run.metrics.get("ratio_to_floor"),
        }
    result = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows, "guide": guide_row}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "autoguidance-quick" if args.quick else "autoguidance"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Autoguidance on eight-gaussians (std {NOISE}): model {args.steps} steps, guide {args.guide_steps} "
        f"steps (same MLP 3x128), Heun 20 steps, n = {args.n}.",
        "",
        "| w (Karras w_K = 1 + w) | share within 3 std of a mode | W2 / noise floor |",
        "|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['w']:g} | {100 * row['near_mode']:.1f}% | {row['w2_ratio']:.2f} |")
    ratio = guide_row["w2_ratio"]
    lines.append(f"| the guide alone | {100 * guide_row['near_mode']:.1f}% | {ratio:.2f} |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [w for w in args.weights if w in (0.0, 1.0, 2.0)] or args.weights
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False)
    for ax, w in zip(axes[0], shown, strict=True):
        points = samples_at[w]
        row = next(r for r in rows if r["w"] == w)
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
        title = f"w = {w:g}: {100 * row['near_mode']:.0f}% near a mode, W2 x{row['w2_ratio']:.2f}"
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-2.2, 2.2)
        ax.set_ylim(-2.2, 2.2)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out / f"{name}.png", dpi=110)


if __name__ == "__main__":
    main()
