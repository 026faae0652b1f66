"""What the benchmarks' workloads are made of: flowkit pipelines built from TOML through the registry,
the hand-written baseline (MLP and moons generator written out by hand), and the engine's stages.

The scripts use flowkit through its public entry points (``flowkit.registry.PluginManager``,
``flowkit.engine.build_pipeline``, ``flowkit.engine.PipelineRun``); the stage functions they time,
which ``flowkit.engine`` does not export, are reached only through :func:`train_stage`,
:func:`sample_stage`, :func:`evaluate_stage` and :func:`lr_factor` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class _FallbackCPU:
    """A CPU device backend for checkouts where ``flowkit_devices`` registers none yet.

    Used only when the installed plugins provide no ``cpu`` device; the JSON records which was used.
    """

    @staticmethod
    def flowkit_register(registry: Any) -> None:
        from flowkit.interfaces import DeviceBackend

        class BenchCPU(DeviceBackend):
            """CPU (benchmark fallback)."""

            @property
            def device(self) -> torch.device:
                return torch.device("cpu")

        registry.add("device", "cpu", BenchCPU)


def make_manager(plugins: Iterable[tuple[str, Any]] = ()) -> tuple[Any, str]:
    """A :class:`flowkit.registry.PluginManager` with the installed plugins plus ``plugins``.

    Returns ``(manager, device_backend)`` where ``device_backend`` says where the ``cpu`` device came
    from ("flowkit_devices" or "benchmark fallback").
    """
    from flowkit import hookimpl
    from flowkit.registry import PluginManager

    plugins = list(plugins)
    manager = PluginManager(plugins=plugins, warn=False)
    if "cpu" in manager.registry.names("device"):
        return manager, "flowkit_devices"
    fallback = type(
        "BenchFallbackCPU", (), {"flowkit_register": staticmethod(hookimpl(_FallbackCPU.flowkit_register))}
    )
    return PluginManager(plugins=[*plugins, ("bench-fallback-cpu", fallback())], warn=False), (
        "benchmark fallback"
    )


def write_pipeline(directory: Path, name: str, tables: dict[str, Any]) -> Path:
    """Write ``tables`` as ``directory/name.toml`` and return its path."""
    import tomli_w

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(tomli_w.dumps(tables), encoding="utf-8")
    return path


def moons_tables(
    device: str = "cpu",
    batch_size: int = 256,
    steps: int = 1000,
    lr: float = 1e-3,
    ema_decay: float = 0.0,
    lr_schedule: str = "constant",
    warmup_steps: int = 0,
    sample: dict[str, Any] | None = None,
    sample_n: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """The benchmark's pipeline: moons, OT path, CFM, MLP 3×256 SiLU; reporters silent."""
    sample_table: dict[str, Any] = {"simulator": "euler", "dynamics": "flow", "steps": 10}
    sample_table.update(sample or {})
    sample_table.setdefault("n", sample_n)
    sample_table.setdefault("trajectories", 0)
    return {
        "run": {"seed": seed, "device": device},
        "data": {"kind": "moons"},
        "path": {"kind": "gaussian", "schedule": {"kind": "ot", "sigma_min": 0.0}},
        "model": {"kind": "mlp", "hidden": [256, 256, 256], "activation": "silu"},
        "loss": {"kind": "cfm"},
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "lr_schedule": lr_schedule,
            "warmup_steps": warmup_steps,
            "ema_decay": ema_decay,
            "log_every": 100,
        },
        "sample": sample_table,
        "evaluate": {"n": min(sample_table["n"], 2000)},
        "report": {"progress": False, "plots": False, "log": False},
    }


def make_run(pipeline: Any, manager: Any, directory: Path) -> Any:
    """A :class:`flowkit.engine.PipelineRun` in ``directory``, prepared as ``run_pipeline`` prepares it."""
    from flowkit.engine import PipelineRun as Run

    directory.mkdir(parents=True, exist_ok=True)
    run = Run(pipeline, directory, manager.hook, quiet=True)
    device = pipeline.device.device
    pipeline.model.to(device)
    for module in pipeline.context.roles.values():
        module.to(device)
    return run


# ---------------------------------------------------------------------------------------------------
# The hand-written baseline
# ---------------------------------------------------------------------------------------------------


class RawMLP(nn.Module):
    """MLP on ``[x, t]``: Linear(3, 256), SiLU, 2 × (Linear(256, 256), SiLU), Linear(256, 2).

    Same layer names as flowkit's ``mlp`` (``net.0`` … ``net.6``), so weights load across.
    """

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 1, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x (B, 2)``, ``t (B,)`` -> ``(B, 2)``."""
        return self.net(torch.cat([x, t[:, None]], dim=1))


# The moons generator, inlined by hand (same maths as flowkit_data.toy.Moons, noise 0.1).
_MOONS_SCALE = 1.0 / math.sqrt((0.75 + ((0.5 + (0.75 - 2.0 / math.pi)) / 2.0 - 0.0625)) / 2.0)


def raw_moons(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``n`` standardised two-moons points with noise 0.1, shape ``(n, 2)``."""
    angle = math.pi * torch.rand(n, generator=generator, device=device)
    inner = torch.rand(n, generator=generator, device=device) < 0.5
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = torch.where(inner, 1.0 - cos, cos) - 0.5
    y = torch.where(inner, 0.5 - sin, sin) - 0.25
    points = _MOONS_SCALE * torch.stack([x, y], dim=1)
    return points + 0.1 * torch.randn(points.shape, generator=generator, device=device)


# ---------------------------------------------------------------------------------------------------
# The engine's stages, the code the benchmarks time (one place to follow them if they move)
# ---------------------------------------------------------------------------------------------------


def train_stage(run: Any, loop: Any = None) -> Any:
    """flowkit's training stage on ``run``, with ``loop`` (a ``flowkit.engine.TrainLoop``:
    ``flowkit.engine.train.train_with``) or a fresh one (the stage itself, ``flowkit.engine.train.train``)."""
    from flowkit.engine.train import train, train_with

    return train(run) if loop is None else train_with(run, loop)


def sample_stage(run: Any) -> Any:
    """flowkit's sampling stage on ``run`` (``flowkit.engine.sample.sample``)."""
    from flowkit.engine.sample import sample

    return sample(run)


def evaluate_stage(run: Any, samples: Any) -> Any:
    """flowkit's evaluation stage on ``run`` and the ``samples`` its sampling stage returned
    (``flowkit.engine.evaluate.evaluate``)."""
    from flowkit.engine.evaluate import evaluate

    return evaluate(run, samples)


def lr_factor(section: Any) -> Callable[[int], float]:
    """The learning-rate factor per step of a ``[train]`` section, as the training loop's
    ``LambdaLR`` uses it (``flowkit.engine.optim.lr_factor``)."""
    from flowkit.engine.optim import lr_factor as factor

    return factor(section)
