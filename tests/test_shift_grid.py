"""The ``shift`` time grid is diffusers' ``FlowMatchEulerDiscreteScheduler`` schedule in flowkit's time
``t = 1 - sigma`` (noise at t = 0), for the static shift and the resolution-dependent ``mu``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flowkit_simulators.timegrids import ShiftGrid

from flowkit.engine.build import build_pipeline
from flowkit.engine.records import sample_times
from flowkit.errors import ConfigError
from flowkit.testing import make_manager

# FlowMatchEulerDiscreteScheduler(...).set_timesteps(10, mu=...).sigmas of diffusers 0.42.1, printed
# to 8 decimals (diffusers computes in float32).
DIFFUSERS_10_STEPS = {
    (1.0, None): [1.0, 0.889, 0.778, 0.667, 0.55599999, 0.44499999, 0.33399999, 0.223, 0.112, 0.001, 0.0],
    (3.0, None): [
        1.0, 0.96012932, 0.91334897, 0.8576923, 0.79036826, 0.70727849,
        0.60215056, 0.46487603, 0.27804878, 0.00892857, 0.0,
    ],
    (1.0, 0.8): [
        1.0, 0.94687742, 0.88635612, 0.81677485, 0.73593444, 0.64086169,
        0.52743524, 0.3897725, 0.21917632, 0.00222282, 0.0,
    ],
}  # fmt: skip


@pytest.mark.parametrize(("shift", "mu"), sorted(DIFFUSERS_10_STEPS, key=str))
def test_shift_grid_is_one_minus_diffusers_sigmas(shift, mu):
    grid = ShiftGrid(ShiftGrid.Params(shift=shift, mu=mu))(10)
    expected = 1 - torch.tensor(DIFFUSERS_10_STEPS[(shift, mu)], dtype=torch.float64)
    assert grid.dtype == torch.float64 and grid.shape == (11,)
    assert (grid - expected).abs().max() < 1e-6


def _diffusers_sigmas(steps, shift=1.0, mu=None, n=1000):
    """FlowMatchEulerDiscreteScheduler's __init__ and set_timesteps, written out from diffusers' source
    (float32 where it is float32)."""
    sigmas = np.linspace(1, n, n, dtype=np.float32)[::-1].copy() / n
    if mu is None:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    sigma_max, sigma_min = float(sigmas[0]), float(sigmas[-1])
    timesteps = np.linspace(sigma_max * n, sigma_min * n, steps)
    sigmas = timesteps / n
    if mu is None:
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    else:
        sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
    return np.concatenate([sigmas.astype(np.float32), [0.0]])


@pytest.mark.parametrize("steps", [1, 2, 7, 28, 50])
@pytest.mark.parametrize(("shift", "mu"), [(1.0, None), (3.0, None), (1.0, 0.8), (1.0, 1.15), (1.0, -0.3)])
def test_shift_grid_matches_diffusers_schedule_written_out(steps, shift, mu):
    grid = ShiftGrid(ShiftGrid.Params(shift=shift, mu=mu))(steps)
    expected = 1 - torch.as_tensor(_diffusers_sigmas(steps, shift, mu), dtype=torch.float64)
    assert (grid - expected).abs().max() < 1e-6
    assert bool((grid[1:] > grid[:-1]).all()) and grid[0] == 0.0 and grid[-1] == 1.0


def test_shift_grid_matches_diffusers_itself_where_installed():
    diffusers = pytest.importorskip("diffusers")
    for shift, mu in DIFFUSERS_10_STEPS:
        kwargs = {"use_dynamic_shifting": True} if mu is not None else {"shift": shift}
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**kwargs)
        scheduler.set_timesteps(28, mu=mu)
        grid = ShiftGrid(ShiftGrid.Params(shift=shift, mu=mu))(28)
        assert (grid - (1 - scheduler.sigmas.double())).abs().max() < 1e-6


def test_shift_grid_spans_the_paths_time_range_in_a_pipeline():
    spec = {
        "data": "moons",
        "path": {"kind": "gaussian", "schedule": {"kind": "vp"}},
        "model": {"kind": "mlp", "hidden": [8]},
        "loss": "cfm",
        "sample": {"grid": {"kind": "shift", "shift": 3.0}, "steps": 6},
    }
    pipeline = build_pipeline(spec, (), make_manager(warn=False))
    lo, hi = pipeline.path.t_range
    times = sample_times(pipeline).double()
    unit = ShiftGrid(ShiftGrid.Params(shift=3.0))(6)
    assert times[0] == lo and times[-1] == hi
    assert torch.allclose(times, lo + (hi - lo) * unit, atol=1e-7, rtol=0)


def test_shift_grid_refuses_a_non_positive_shift():
    spec = {
        "data": "moons",
        "path": "gaussian",
        "model": {"kind": "mlp", "hidden": [8]},
        "loss": "cfm",
        "sample": {"grid": {"kind": "shift", "shift": 0.0}},
    }
    with pytest.raises(
        ConfigError, match=r"\[sample.grid\] key 'shift': invalid value 0.0: shift must be finite and > 0"
    ):
        build_pipeline(spec, (), make_manager(warn=False))
