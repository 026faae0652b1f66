"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_plots(run: Any, samples: Tensor, reference: Tensor, trajectory: Tensor | None) -> list[Path]:
    """Write ``samples.png`` (samples beside held-out data); 2D runs only. Returns the files written."""
    if samples.dim() != 2 or samples.shape[1] != 2:
        return []
    written = [samples_png(run.directory / "samples.png", samples, reference, run.metrics)]
    if trajectory is not None:
        written.append(trajectories_png(run.directory / "trajectories.png", trajectory))
    return written


def _limits(*clouds: Tensor) -> tuple[tuple[float, float], tuple[float, float]]:
    both = torch.cat([c.reshape(-1, 2) for c in clouds])
    both = both[torch.isfinite(both).all(dim=1)]
    lo = torch.quantile(both, 0.005, dim=0)
    hi = torch.quantile(both, 0.995, dim=0)
    pad = 0.1 * (hi - lo)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def samples_png(path: Path, samples: Tensor, reference: Tensor, metrics: dict[str, Any]) -> Path:
    """Two panels with equal axes: held-out data and the model's samples."""
    plt = _pyplot()
    xlim, ylim = _limits(samples, reference)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
    n = min(len(samples), len(reference))
    axes[0].scatter(reference[:n, 0], reference[:n, 1], s=2, alpha=0.5, color="tab:blue")
    axes[0].set_title(f"held-out data ({n})")
    axes[1].scatter(samples[:n, 0], samples[:n, 1], s=2, alpha=0.5, color="tab:orange")
    title = f"samples ({n})"
    if metrics.get("distance") is not None:
        title += f"\n{metrics['metric']} = {metrics['distance']:.3f} (floor {metrics['noise_floor']:.3f})"
    axes[1].set_title(title)
    for ax in axes:
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def trajectories_png(path: Path, trajectory: Tensor) -> Path:
    """Sample paths from noise (t = 0, grey) to data (t = 1, orange)."""
    plt = _pyplot()
    traj = trajectory.reshape(trajectory.shape[0], trajectory.shape[1], -1)
    xlim, ylim = _limits(traj[0], traj[-1])
    fig, ax = plt.subplots(figsize=(5, 5))
    for k in range(traj.shape[1]):
        ax.plot(traj[:, k, 0], traj[:, k, 1], color="black", alpha=0.15, linewidth=0.6)
    ax.scatter(traj[0, :, 0], traj[0, :, 1], s=4, color="tab:gray", label="t = 0 (noise)", zorder=3)
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=4, color="tab:orange", label="t = 1 (samples)", zorder=3)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("trajectories")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
