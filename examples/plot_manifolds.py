"""The figures of examples/README.md for the sphere and torus examples: samples beside fresh data.

    python examples/plot_manifolds.py runs/sphere-vmf runs/torus-checkerboard

writes examples/sphere-vmf.png (a Mollweide map of S^2: longitude atan2(y, x), latitude asin(z)) and
examples/torus-checkerboard.png (the square [0, 2 pi)^2 of angles).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _data(kind: str, n: int) -> np.ndarray:
    from flowkit_manifolds.datasets import TorusCheckerboard, VMFMixture

    dataset = (
        VMFMixture(VMFMixture.Params()) if kind == "sphere" else TorusCheckerboard(TorusCheckerboard.Params())
    )
    return dataset.sample(n, generator=torch.Generator().manual_seed(1)).numpy()


def sphere(run: Path) -> None:
    samples = np.load(run / "samples.npy")
    fig = plt.figure(figsize=(9, 2.8))
    for i, (title, x) in enumerate((("samples", samples), ("data", _data("sphere", len(samples))))):
        ax = fig.add_subplot(1, 2, i + 1, projection="mollweide")
        ax.scatter(np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2], -1, 1)), s=1.5, alpha=0.6)
        ax.set_title(title)
        ax.set_xticklabels([])
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "sphere-vmf.png", dpi=80)


def torus(run: Path) -> None:
    samples = np.load(run / "samples.npy")
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax, (title, x) in zip(
        axes, (("samples", samples), ("data", _data("torus", len(samples)))), strict=True
    ):
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.6)
        ax.set(xlim=(0, 2 * np.pi), ylim=(0, 2 * np.pi), aspect="equal", title=title)
    fig.tight_layout()
    fig.savefig(HERE / "torus-checkerboard.png", dpi=80)


if __name__ == "__main__":
    sphere(Path(sys.argv[1]))
    torus(Path(sys.argv[2]))
