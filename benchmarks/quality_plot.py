"""The figure of ``bench_quality.py``: sample distance against network evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(result: dict[str, Any], path: Path, few_step: dict[str, Any] | None = None) -> Path:
    """PNG: W2 against network evaluations (log–log), one panel per model, the noise floor dashed.
    ``few_step``: the rows of ``bench_flowmaps.py quality`` (MeanFlow, shortcut, reflow runs at 1, 2,
    4 evaluations), drawn dotted in the panel of the trained model (the same moons data)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        entry = result["models"][model]
        for simulator, points in entry["simulators"].items():
            ax.plot(
                [p["network_evals"] for p in points],
                [p["distance"] for p in points],
                marker="o",
                label=simulator,
            )
        if few_step is not None and model == "trained":
            for name, points in few_step["rows"].items():
                ax.plot(
                    [p["network_evals"] for p in points],
                    [p["distance"] for p in points],
                    marker="s",
                    linestyle=":",
                    label=name,
                )
        floor = entry["noise_floor"]
        ax.axhline(floor["mean"], color="gray", linestyle="--", label="noise floor (data vs data)")
        ax.axhspan(floor["mean"] - floor["std"], floor["mean"] + floor["std"], color="gray", alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations")
        ax.set_ylabel(f"W2 to held-out data (n = {result['config']['n']})")
        ax.set_title(f"{model}: {entry['data']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
