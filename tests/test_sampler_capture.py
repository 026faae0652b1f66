"""Capture planning: a backend that captures samplers compiles a fixed-step simulator once, at the
sample count; an adaptive simulator is never captured and gets only the grid's end points."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import registering_plugin, tiny_file
from flowkit_devices.backends import CPUBackend
from torch import Tensor

from flowkit.engine import build_pipeline, run_pipeline
from flowkit.interfaces import ODE, Simulator
from flowkit.testing import make_manager


class CapturingBackend(CPUBackend):
    """The CPU, claiming to capture samplers; records what it is asked to compile."""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.compiled: list[tuple[int, ...]] = []

    @property
    def captures_samplers(self) -> bool:
        return True

    def compile_sampler(self, fn, example):
        self.compiled.append(tuple(example.shape))
        return fn


class AdaptiveEuler(Simulator):
    """Euler with step doubling: a step is accepted when a full step and two half steps agree."""

    adaptive = True
    capturable = False
    #: ``ts.numel()`` of every call, by method.
    seen: ClassVar[dict[str, list[int]]] = {}

    def _integrate(self, dynamics: ODE, x: Tensor, t0: float, t1: float, tol: float = 1e-2) -> Tensor:
        h, t, nfe = (t1 - t0) / 4, t0, 0
        while t1 - t > 1e-9:
            h = min(h, t1 - t)
            tb = torch.full((x.shape[0],), t, dtype=x.dtype)
            k = dynamics.drift(x, tb)
            full = x + h * k
            half = x + 0.5 * h * k
            two = half + 0.5 * h * dynamics.drift(half, tb + 0.5 * h)
            nfe += 2
            if float((two - full).abs().max()) < tol or h < 1e-4:
                x, t, h = two, t + h, 1.5 * h
            else:
                h = 0.5 * h
        self.last_nfe += nfe
        return x

    def simulate(self, dynamics, x, ts, generator=None, progress=None):
        self.seen.setdefault("simulate", []).append(ts.numel())
        self.check(dynamics)
        self.last_nfe = 0
        x = self._integrate(dynamics, x, float(ts[0]), float(ts[-1]))
        if progress is not None:
            progress(1000, 1000)
        return x

    def simulate_trajectory(self, dynamics, x, ts, generator=None):
        self.seen.setdefault("simulate_trajectory", []).append(ts.numel())
        self.last_nfe = 0
        states = [x]
        for a, b in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
            states.append(self._integrate(dynamics, states[-1], a, b))
        return torch.stack(states)


@pytest.fixture
def capture_manager():
    return make_manager(
        plugins=[
            registering_plugin(
                "capture",
                ("device", "capturing", CapturingBackend),
                ("simulator", "adaptive-euler", AdaptiveEuler),
            )
        ]
    )


def _capture_file(tmp_path, simulator: str):
    return tiny_file(
        tmp_path,
        name=f"{simulator}.toml",
        replace={
            "seed = 3": 'seed = 3\ndevice = { kind = "capturing" }',
            'simulator = "euler"': f'simulator = "{simulator}"',
            "steps = 60": "steps = 20",
        },
    )


def test_a_fixed_step_simulator_is_captured_once(tmp_path, capture_manager):
    pipeline = build_pipeline(_capture_file(tmp_path, "euler"), (), capture_manager)
    assert pipeline.capture is True  # planned when built, before any training
    assert pipeline.device.compiled == []
    run = run_pipeline(pipeline, capture_manager, out=str(tmp_path / "run"), quiet=True)
    assert pipeline.device.compiled == [(pipeline.sample.n, 2)]
    assert run.metrics["sampler_captured"] is True
    saved = json.loads((run.directory / "metrics.json").read_text())
    assert saved["sampler_captured"] is True


def test_an_adaptive_simulator_is_not_captured_and_gets_the_end_points(tmp_path, capture_manager):
    AdaptiveEuler.seen.clear()
    pipeline = build_pipeline(_capture_file(tmp_path, "adaptive-euler"), (), capture_manager)
    assert pipeline.capture is False
    run = run_pipeline(pipeline, capture_manager, out=str(tmp_path / "run"), quiet=True)
    assert pipeline.device.compiled == []
    assert run.metrics["sampler_captured"] is False
    assert AdaptiveEuler.seen["simulate"] == [2]  # ts[[0, -1]] only
    assert AdaptiveEuler.seen["simulate_trajectory"] == [pipeline.sample.steps + 1]  # the whole grid
    assert run.metrics["nfe"] > 0
    samples = np.load(run.directory / "samples.npy")
    assert samples.shape == (pipeline.sample.n, 2) and np.isfinite(samples).all()
