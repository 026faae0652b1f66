"""Autoguidance on a 2D mixture: the share of samples near a mode, with and without a weaker guide.

Run from the repository root::

    python benchmarks/bench_autoguidance.py            # about 15 minutes on 2 loaded CPU cores
    python benchmarks/bench_autoguidance.py --quick    # tiny sizes, to check that it runs

The data is flowkit's ``eight-gaussians`` (centres on a circle of radius sqrt(2), std 0.1). The model
is CFM on the OT path with an MLP 3x128 (8 Fourier features of t) trained ``--steps``; one run per
seed, which also writes a checkpoint at half its steps and trains a guide alongside (``[train] guide
= { steps = half }``: the same network, its own cosine schedule over half the steps). The guides
(Karras et al. 2024: a weaker model of the same task, with errors of the same kind):

- ``half``: the run's own checkpoint at half its steps (``guide = "<run>/checkpoint-N.pt"``);
- ``alongside``: the guide trained alongside (``guide = "alongside"``);
- ``half, t >= 0.5``: ``half`` on the guidance interval ``t_lo = 0.5`` (the later half of sampling).

Each row samples the model guided by one of them at a weight ``w`` (flowkit's weight, Karras'
``w_K = 1 + w``; ``w = 0`` is the model alone) and gives the share of ``--n`` samples within 3 std
of a centre and the exact W2 to as many held-out points over the noise floor, per seed and their
mean. Writes ``benchmarks/reference/autoguidance.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowkit.api import load_pipeline
from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoints import checkpoint_name, load_weights
from flowkit.engine.evaluate import measure
from flowkit.engine.guide_files import load_guide_weights
from flowkit.engine.sample import draw_samples
from flowkit.registry import PluginManager

REFERENCE = Path(__file__).resolve().parent / "reference"
NOISE = 0.1
#: ``(label, guide, w, t_lo)``: the rows measured; ``guide`` is "half", "alongside" or None (unguided).
SETTINGS: list[tuple[str, str | None, float, float]] = [
    ("the model alone", None, 0.0, 0.0),
    ("half", "half", 1.0, 0.0),
    ("half", "half", 2.0, 0.0),
    ("half", "half", 3.0, 0.0),
    ("alongside", "alongside", 2.0, 0.0),
    ("alongside", "alongside", 3.0, 0.0),
    ("half, t >= 0.5", "half", 3.0, 0.5),
    ("half, t >= 0.5", "half", 4.0, 0.5),
    ("half, t >= 0.5", "half", 5.0, 0.5),
]


def spec(steps: int, n: int, seed: int = 0) -> dict[str, Any]:
    half = max(1, steps // 2)
    return {
        "run": {"seed": seed, "device": "cpu"},
        "data": {"kind": "eight-gaussians", "noise": NOISE},
        "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
        "model": {"kind": "mlp", "hidden": [128, 128, 128], "activation": "silu", "time_features": 8},
        "loss": {"kind": "cfm"},
        "train": {
            "steps": steps,
            "batch_size": 256,
            "lr": 2e-3,
            "lr_schedule": "cosine",
            "ema_decay": 0.99,
            "checkpoint_every": half,
            "keep_checkpoints": 0,
            "log_every": half,
            "guide": {"steps": half},
        },
        "sample": {"simulator": "heun", "dynamics": "flow", "steps": 20, "n": n},
        "evaluate": {"metric": "w2", "n": n},
    }


def near_a_mode(samples: torch.Tensor, centres: torch.Tensor) -> float:
    """The share of ``samples (n, 2)`` within 3 std of their nearest centre."""
    return float((torch.cdist(samples, centres).min(dim=1).values <= 3 * NOISE).float().mean())


def measure_row(
    manager: PluginManager, run: Path, steps: int, n: int, seed: int, guide: str | None, w: float, t_lo: float
) -> tuple[dict[str, float], torch.Tensor]:
    table = spec(steps, n, seed)
    if guide is not None:
        named = "alongside" if guide == "alongside" else str(run / checkpoint_name(max(1, steps // 2)))
        table["sample"]["guidance"] = {"kind": "auto", "scale": w, "guide": named, "t_lo": t_lo}
    pipeline = build_pipeline(table, (), manager)
    load_weights(run / "model.pt", pipeline.network)
    load_guide_weights(pipeline, run)
    pipeline.network.eval()
    samples = draw_samples(pipeline, n)[1].float().cpu()
    metrics = measure(pipeline, samples)[0]
    near = near_a_mode(samples, pipeline.dataset.centres())
    return {"near_mode": near, "w2_ratio": float(metrics["ratio_to_floor"])}, samples


#: The panels of the figure: the model alone, the best guide and the guide trained alongside.
PICKS = [("the model alone", 0.0), ("half, t >= 0.5", 4.0), ("alongside", 3.0)]


def plot(
    shown: dict[tuple[str, float], torch.Tensor], rows: list[dict[str, Any]], seed: int, file: Path
) -> None:
    """The samples of ``seed`` for :data:`PICKS`, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PICKS), figsize=(3.4 * len(PICKS), 3.4), squeeze=False)
    for ax, (label, w) in zip(axes[0], PICKS, strict=True):
        points = shown[(label, w)]
        row = next(r for r in rows if (r["label"], r["w"]) == (label, w))
        measured = row["seeds"][seed]
        title = f"{label}, w = {w:g}: {100 * measured['near_mode']:.0f}% near, W2 x{measured['w2_ratio']:.2f}"
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
        ax.set_title(title, fontsize=8)
        ax.set_xlim(-2.2, 2.2)
        ax.set_ylim(-2.2, 2.2)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(file, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=None, help="keep (and reuse) the trained runs here")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REFERENCE)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.n, args.seeds = 40, 200, [0]
    torch.set_num_threads(1)
    manager = PluginManager(warn=False)
    rows = [{"label": s[0], "guide": s[1], "w": s[2], "t_lo": s[3], "seeds": {}} for s in SETTINGS]
    shown: dict[tuple[str, float], torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            run = (args.runs or Path(tmp)) / f"seed{seed}"
            if not (run / "model.pt").is_file():
                run = load_pipeline(spec(args.steps, args.n, seed), manager=manager).run(out=run).directory
            for row in rows:
                measured, samples = measure_row(
                    manager, run, args.steps, args.n, seed, row["guide"], row["w"], row["t_lo"]
                )
                row["seeds"][seed] = measured
                if seed == args.seeds[0]:
                    shown[(row["label"], row["w"])] = samples
                print(seed, row["label"], row["w"], measured, flush=True)
    for row in rows:
        for key in ("near_mode", "w2_ratio"):
            row[key] = sum(m[key] for m in row["seeds"].values()) / len(row["seeds"])
    result = {"args": {k: str(v) for k, v in vars(args).items() if k != "out"}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "autoguidance-quick" if args.quick else "autoguidance"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    base = rows[0]
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        f"Autoguidance on eight-gaussians (std {NOISE}): model MLP 3x128 (8 Fourier features of t), "
        f"{args.steps} steps; guides: its checkpoint at half the steps (half) or a copy trained alongside "
        f"for half the steps (alongside); Heun 20 steps, n = {args.n}; seeds {seeds}, their mean.",
        "",
        "| guide | w | within 3 std of a mode | change | W2 / noise floor | change "
        "| per seed (share, ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        gain = 100 * (row["near_mode"] - base["near_mode"])
        ratio = row["w2_ratio"] - base["w2_ratio"]
        per = "; ".join(f"{100 * m['near_mode']:.1f}%, {m['w2_ratio']:.2f}" for m in row["seeds"].values())
        lines.append(
            f"| {row['label']} | {row['w']:g} | {100 * row['near_mode']:.1f}% | {gain:+.1f} | "
            f"{row['w2_ratio']:.2f} | {ratio:+.2f} | {per} |"
        )
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(shown, rows, args.seeds[0], args.out / f"{name}.png")


if __name__ == "__main__":
    main()
