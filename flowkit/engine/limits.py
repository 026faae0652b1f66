"""Sizes that cannot run, refused when a pipeline is built (``flowkit validate`` included).

A batch, a sample set or an evaluation whose estimated memory exceeds what the device backend says is
free fails at build time with the key to lower, instead of minutes later in an allocation. The
estimates are deliberately low (they count the tensors every step must hold, not the allocator's
slack), so a refused size could not have run; a size that passes may still be too large.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from flowkit.errors import ConfigError
from flowkit.host import cpu_memory_available

if TYPE_CHECKING:
    from flowkit.engine.records import Pipeline

_FLOAT = 4  # bytes of a float32


def activation_floats(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[int, int]:
    """``(total, largest)``: floats per data point of all leaf modules' outputs in one forward pass of
    ``model(x, t)``, and of the largest one (what a no-grad forward holds at its peak). ``(0, 0)`` when
    the model has no leaf modules or the forward pass fails (nothing is then assumed)."""
    sizes: list[int] = []

    def record(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            model(x, t)
    except Exception:  # a plugin model that cannot take this probe: no estimate, no refusal
        return 0, 0
    finally:
        for handle in handles:
            handle.remove()
    batch = x.shape[0]
    return sum(sizes) // batch, (max(sizes) // batch if sizes else 0)


def check_sizes(pipeline: Pipeline) -> None:
    """Raise a :class:`ConfigError` naming the key when a training batch, the sample set or the
    evaluation needs more memory than ``pipeline.device.memory_available()``."""
    available = pipeline.device.memory_available()
    if available is None:
        return
    numel = math.prod(pipeline.dataset.shape)
    device = pipeline.device.device
    total, largest = 0, 0
    if isinstance(pipeline.model, nn.Module) and pipeline.model.trainable:
        probe = torch.zeros((2, *pipeline.dataset.shape), device=device)  # no draw: the RNGs stay untouched
        total, largest = activation_floats(pipeline.model, probe, torch.full((2,), 0.5, device=device))
    where = f"{pipeline.source}: "
    have = f"{_gib(available)} free on {device}"
    train = pipeline.train
    if train is not None:
        # data, noise, x_t, target, prediction and gradients; each layer's output (kept for backward)
        # and, transiently, its gradient
        per_point = _FLOAT * (8 * numel + 2 * total)
        need = train.batch_size * per_point
        if need > available:
            raise ConfigError(
                f"{where}[train] key 'batch_size': {train.batch_size} points need at least {_gib(need)} "
                f"per step ({per_point:,} bytes per point through model '{pipeline.model.registered_name}'), "
                f"more than the {have}; lower [train] batch_size"
            )
    sample = pipeline.sample
    per_point = _FLOAT * (10 * numel + 2 * largest)
    points = sample.n * per_point
    paths = min(sample.trajectories, sample.n) * (sample.steps + 1) * numel * _FLOAT
    need = points + paths + (sample.steps + 1) * 8  # and the time grid
    if need > available:
        key, lower = ("n", "[sample] n") if points >= paths else ("steps", "[sample] steps or trajectories")
        raise ConfigError(
            f"{where}[sample] key '{key}': {sample.n} samples ({sample.trajectories} trajectories of "
            f"{sample.steps} steps) need at least {_gib(need)}, more than the {have}; lower {lower}"
        )
    evaluate = pipeline.evaluate  # measured on the CPU
    cpu = cpu_memory_available()
    held_out = (2 + evaluate.floor_repeats) * evaluate.n * numel * _FLOAT
    need = held_out + evaluate.metric.memory_bytes(evaluate.n, evaluate.n, numel)
    if cpu is not None and need > cpu:
        raise ConfigError(
            f"{where}[evaluate] key 'n': metric '{evaluate.metric.registered_name}' on {evaluate.n} points "
            f"needs at least {_gib(need)}, more than the {_gib(cpu)} free on cpu; lower [evaluate] n (or the "
            "metric's sizes)"
        )


def _gib(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**28 else f"{size / 2**20:,.1f} MiB"
