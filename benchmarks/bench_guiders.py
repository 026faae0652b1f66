"""Guiders on the digits: class accuracy against Fréchet ratio, per guider and guidance scale.

Run from the repository root::

    python benchmarks/bench_guiders.py            # about 10 minutes on 2 loaded CPU cores
    python benchmarks/bench_guiders.py --quick    # tiny sizes, to check that it runs

Trains ``examples/digits-guidance.toml`` once (its own training, into a temporary run directory) and,
for autoguidance, the same file for a quarter of its steps (the guide: a deliberately short run of the
same network). Then samples the trained weights with every built-in guider at several scales (cfg++:
several lambda) and reads the samples with flowkit's reference classifier
(``plugins/flowkit_metrics/images.py``): the share read as the class asked for, and the Fréchet
distance of its features to the held-out digits divided by that of as many training digits (the
ratio). Writes ``benchmarks/reference/guiders-digits.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowkit_metrics.images import image_metrics

from flowkit.api import load_pipeline
from flowkit.config import read_toml
from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoints import load_weights
from flowkit.engine.guidance import sample_labels
from flowkit.engine.sample import draw_samples
from flowkit.registry import PluginManager

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-guidance.toml"
REFERENCE = ROOT / "benchmarks" / "reference"

#: Each guider's settings besides its scale (the papers' choices where they give one).
GUIDERS: dict[str, dict[str, Any]] = {
    "cfg": {},
    "interval": {"t_lo": 0.15, "t_hi": 0.78},  # EDM2's sigma band (0.28, 5.42] in flowkit's time
    "apg": {"eta": 0.0, "momentum": -0.5},
    "cfg-zero-star": {"optimized": True, "zero_init_steps": 1},
    "rescale": {"phi": 0.7},
    "auto": {},
}


def settings(scales: list[float], lams: list[float]) -> list[tuple[str, dict[str, Any]]]:
    rows: list[tuple[str, dict[str, Any]]] = [("unguided", {"scale": 0.0})]
    for kind, extra in GUIDERS.items():
        rows += [(kind, {"kind": kind, "scale": s, **extra}) for s in scales]
    rows += [("cfg++", {"kind": "cfg++", "lam": lam}) for lam in lams]
    return rows


def train_runs(runs: Path, steps: int, manager: PluginManager) -> tuple[Path, Path, int]:
    """The model's and the guide's run directories under ``runs`` (trained unless already there)."""
    small = [f"train.steps={steps}", "sample.n=100", "evaluate.n=100"]
    guide_steps = max(1, steps // 4)
    found = []
    for name, extra in (("model", []), ("guide", [f"train.steps={guide_steps}"])):
        directory = runs / f"{name}-{steps}"
        if not (directory / "model.pt").is_file():
            directory = load_pipeline(EXAMPLE, [*small, *extra], manager).run(out=directory).directory
        found.append(directory)
    return found[0], found[1], guide_steps


def knobs(guidance: dict[str, Any]) -> tuple[float | None, float | None]:
    """``(scale, lam)`` of a guidance table (cfg++ has ``lam`` and no scale)."""
    return guidance.get("scale"), guidance.get("lam")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="samples per setting (a multiple of 10)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 3.0])
    parser.add_argument("--lams", type=float, nargs="*", default=[0.2, 0.5, 0.8])
    parser.add_argument("--runs", type=Path, default=None, help="keep (and reuse) the trained runs here")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REFERENCE)
    args = parser.parse_args()
    raw = read_toml(EXAMPLE)
    steps = int(raw["train"]["steps"])
    if args.quick:
        steps, args.n, args.scales, args.lams = 20, 50, [2.0], [0.5]
    torch.set_num_threads(1)
    manager = PluginManager(warn=False)
    name = "guiders-digits-quick" if args.quick else "guiders-digits"
    args.out.mkdir(parents=True, exist_ok=True)
    file = args.out / f"{name}.json"
    rows: list[dict[str, Any]] = []
    if file.is_file():  # settings measured before on the same training are kept
        earlier = json.loads(file.read_text())
        if (earlier["train_steps"], earlier["n"]) == (steps, args.n):
            rows = earlier["rows"]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, guide_dir, guide_steps = train_runs(args.runs or Path(tmp), steps, manager)
        trained_s = time.perf_counter() - start
        for guider, guidance in settings(args.scales, args.lams):
            if guider == "auto":
                guidance = {**guidance, "guide": str(guide_dir)}
            done = [r for r in rows if (r["guider"], r["scale"], r["lam"]) == (guider, *knobs(guidance))]
            if done:
                continue
            table = copy.deepcopy(raw)
            table["sample"].update({"n": args.n, "guidance": guidance})
            table["evaluate"]["n"] = min(args.n, int(table["evaluate"]["n"]))
            pipeline = build_pipeline(table, (), manager)
            load_weights(model_dir / "model.pt", pipeline.network)
            pipeline.network.eval()
            samples = draw_samples(pipeline, args.n)[1].float().cpu()
            labels = sample_labels(pipeline, args.n)
            metrics = image_metrics(pipeline.dataset, samples, labels, seed=0) or {}
            scale, lam = knobs(guidance)
            row = {
                "guider": guider,
                "scale": scale,
                "lam": lam,
                "class_accuracy": metrics.get("class_accuracy"),
                "frechet": metrics.get("frechet"),
                "frechet_ratio": metrics.get("frechet_ratio"),
            }
            rows.append(row)
            print(row, flush=True)
            partial = {"example": "examples/digits-guidance.toml", "train_steps": steps, "n": args.n}
            file.write_text(json.dumps({**partial, "rows": rows}, indent=2) + "\n")
    order = ["unguided", *GUIDERS, "cfg++"]
    rows.sort(key=lambda r: (order.index(r["guider"]), r["scale"] or 0.0, r["lam"] or 0.0))
    result = {
        "example": "examples/digits-guidance.toml",
        "train_steps": steps,
        "guide_steps": guide_steps,
        "n": args.n,
        "training_seconds": trained_s,
        "rows": rows,
    }
    file.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Guiders on the digits: examples/digits-guidance.toml trained {steps} steps (the autoguidance "
        f"guide: the same file, {guide_steps} steps), Heun {raw['sample']['steps']} steps, {args.n} samples "
        "per row; read by the reference classifier (plugins/flowkit_metrics/images.py).",
        "",
        "| guider | scale (cfg++: lambda) | read as their class | Fréchet ratio |",
        "|---|---|---|---|",
    ]
    for row in rows:
        knob = row["lam"] if row["guider"] == "cfg++" else row["scale"]
        accuracy, ratio = 100 * row["class_accuracy"], row["frechet_ratio"]
        lines.append(f"| {row['guider']} | {knob:g} | {accuracy:.1f}% | {ratio:.2f} |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for guider in ["unguided", *GUIDERS, "cfg++"]:
        points = [r for r in rows if r["guider"] == guider]
        xs = [r["frechet_ratio"] for r in points]
        ys = [100 * r["class_accuracy"] for r in points]
        ax.plot(xs, ys, marker="o", label=guider)
    ax.axvline(1.2, color="grey", lw=0.5, ls="--")
    ax.axhline(99, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("Fréchet ratio (lower: closer to the held-out digits)")
    ax.set_ylabel("read as their class (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / f"{name}.png", dpi=110)


if __name__ == "__main__":
    main()
