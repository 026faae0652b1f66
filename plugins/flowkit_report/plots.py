"""PNG plots of a run (matplotlib, Agg backend: no display needed).

For images ``(N, C, H, W)``: ``samples.png``, a grid with one row per class asked for (``labels.npy`` of
the run directory; rows of samples in order without labels). For 2D data: ``samples.png`` (held-out
data beside the samples), ``trajectories.png`` (paths from noise
at ``t = 0`` to samples at ``t = 1``) and ``vector_field.png`` (streamlines of the learned velocity
``u_t`` at four times, over the particles at those times). A plot that fails is reported and skipped:
a plot never breaks a run.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from flowkit.interfaces import Run


class ReportWarning(UserWarning):
    """A reporter could not write one of its files; the run itself is unaffected."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_plots(run: Run, samples: Tensor, reference: Tensor, trajectory: Tensor | None) -> list[Path]:
    """Write the PNGs of a 2D run (none for other shapes); returns the files written.

    Each plot is attempted on its own: one that raises is reported (a :class:`ReportWarning`, or a
    line in ``report-errors.log`` under ``--quiet``) and the others are still written.
    """
    if samples.dim() == 4:
        try:
            return [image_grid_png(run.directory / "samples.png", samples, _labels(run), run.metrics)]
        except Exception as exc:  # a plot must never break a run
            _report_failure(run, "samples.png", exc)
            return []
        finally:
            _close_all()
    if samples.dim() != 2 or samples.shape[1] != 2:
        return []
    directory = run.directory
    plots: list[tuple[str, Callable[[], Path]]] = [
        ("samples.png", lambda: samples_png(directory / "samples.png", samples, reference, run.metrics))
    ]
    if trajectory is not None:
        plots.append(
            ("trajectories.png", lambda: trajectories_png(directory / "trajectories.png", trajectory))
        )
    plots.append(
        (
            "vector_field.png",
            lambda: vector_field_png(directory / "vector_field.png", run, reference, trajectory),
        )
    )
    written = []
    for name, plot in plots:
        try:
            written.append(plot())
        except Exception as exc:  # a plot must never break a run
            _report_failure(run, name, exc)
        finally:
            _close_all()
    return written


def _close_all() -> None:
    import matplotlib.pyplot as plt

    plt.close("all")


def _report_failure(run: Run, name: str, exc: Exception) -> None:
    message = f"flowkit_report: could not write {name}: {type(exc).__name__}: {exc}"
    if run.quiet:
        with open(run.directory / "report-errors.log", "a", encoding="utf-8") as handle:
            handle.write(message + "\n" + traceback.format_exc() + "\n")
    else:
        warnings.warn(message, ReportWarning, stacklevel=2)


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


#: Fractions of the path's time range at which ``vector_field.png`` shows the field.
FIELD_TIMES = (0.0, 1 / 3, 2 / 3, 1.0)


def field_times(t_range: tuple[float, float]) -> list[float]:
    """The times of ``vector_field.png``: :data:`FIELD_TIMES` of ``t_range = (t_start, t_end)``."""
    lo, hi = t_range
    return [lo + f * (hi - lo) for f in FIELD_TIMES]


@torch.no_grad()
def velocity_on_grid(
    velocity: Callable[[Tensor, Tensor], Tensor],
    t: float,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    resolution: int = 25,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``u_t`` on a ``resolution x resolution`` grid: ``X, Y, U, V``, each ``(resolution, resolution)``.

    Rows follow ``y``, columns ``x`` (matplotlib's ``streamplot`` layout); non-finite values are 0.
    """
    xs = torch.linspace(*xlim, resolution)
    ys = torch.linspace(*ylim, resolution)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1).to(device)
    times = torch.full((points.shape[0],), float(t), device=device)
    u = velocity(points, times).float().cpu()
    u = torch.where(torch.isfinite(u), u, torch.zeros_like(u))
    shape = (resolution, resolution)
    return grid_x, grid_y, u[:, 0].reshape(shape), u[:, 1].reshape(shape)


def vector_field_png(path: Path, run: Any, reference: Tensor, trajectory: Tensor | None) -> Path:
    """Streamlines of the model's velocity ``u_t`` at four times from noise to data, coloured by speed,
    over the sampled particles at the nearest simulator time (``reference`` data in the last panel)."""
    plt = _pyplot()
    # The model's velocity (converted from a score through the path where it learned a score).
    velocity = run.role("velocity", needed_by="the vector-field plot")
    t_range = tuple(float(v) for v in run.path.t_range)
    times = field_times(t_range)  # type: ignore[arg-type]
    clouds = [reference] if trajectory is None else [reference, trajectory.reshape(-1, 2)]
    xlim, ylim = _limits(*clouds)
    grid_times = None
    if trajectory is not None:
        grid_times = run.sample_times().cpu()
    fig, axes = plt.subplots(
        1, len(times), figsize=(4.0 * len(times) + 1.0, 4.2), sharex=True, sharey=True, layout="constrained"
    )
    fields = [velocity_on_grid(velocity, t, xlim, ylim, device=run.device) for t in times]
    top = max(float(torch.hypot(u, v).max()) for _, _, u, v in fields) or 1.0
    norm = plt.Normalize(0.0, top)
    for ax, t, (gx, gy, u, v) in zip(axes, times, fields, strict=True):
        speed = torch.hypot(u, v)
        if grid_times is not None:
            index = int(torch.argmin((grid_times - t).abs()))
            points = trajectory[index].reshape(-1, 2)  # type: ignore[index]
            ax.scatter(points[:, 0], points[:, 1], s=4, color="tab:orange", alpha=0.7, zorder=3)
        if t == times[-1]:
            ax.scatter(reference[:, 0], reference[:, 1], s=2, color="tab:blue", alpha=0.25, zorder=2)
        stream = ax.streamplot(
            gx.numpy(),
            gy.numpy(),
            u.numpy(),
            v.numpy(),
            color=speed.numpy(),
            cmap="viridis",
            norm=norm,
            density=1.0,
            linewidth=0.8,
            arrowsize=0.8,
        )
        ax.set_title(f"u_t at t = {t:.2f}")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_aspect("equal")
    fig.colorbar(stream.lines, ax=list(axes), shrink=0.8, label="speed |u_t(x)|")
    fig.suptitle("the model's vector field u_t (orange: sample paths at time t; blue: held-out data)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _labels(run: Any) -> Tensor | None:
    """The labels the samples were asked for (``labels.npy`` of the run directory), if any."""
    import numpy as np

    file = Path(run.directory) / "labels.npy"
    return torch.from_numpy(np.load(file)) if file.is_file() else None


def image_grid_png(
    path: Path, samples: Tensor, labels: Tensor | None, metrics: dict[str, Any], per_row: int = 10
) -> Path:
    """A grid of image samples ``(N, C, H, W)`` in [-1, 1]: one row per class of ``labels (N,)`` (the
    first ``per_row`` samples of each, in class order), or rows of samples in order without labels."""
    plt = _pyplot()
    if labels is None:
        rows = [("", samples[i : i + per_row]) for i in range(0, min(len(samples), per_row * 10), per_row)]
    else:
        rows = [(f"{int(c)}", samples[labels == c][:per_row]) for c in torch.unique(labels)]
    fig, axes = plt.subplots(
        len(rows), per_row, figsize=(per_row * 0.8, len(rows) * 0.8 + 0.6), squeeze=False
    )
    for r, (name, images) in enumerate(rows):
        for c in range(per_row):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                image = ((images[c].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
                ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=1)
        if name:
            axes[r][0].set_ylabel(name if name != str(len(rows)) else "null", rotation=0, labelpad=12)
    title = "samples, one row per class"
    if metrics.get("class_accuracy") is not None:
        title += f" (read as their class: {100 * metrics['class_accuracy']:.1f}%)"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
