"""The densities of training times (the kind ``time``): each density integrates to 1 and to its CDF, its
draws pass a Kolmogorov-Smirnov test against that CDF at n = 10^5, and ``mode`` and ``cosmap`` are
diffusers' ``compute_density_for_timestep_sampling`` mirrored into flowkit's time (t = 1 - sigma)."""

from __future__ import annotations

import math

import pytest
import torch
from flowkit_losses.times import CosmapTime, LogitNormalTime, ModeTime, UniformTime
from scipy import integrate, stats

from flowkit.engine.build import build_pipeline
from flowkit.errors import ConfigError
from flowkit.testing import make_manager

DENSITIES = {
    "uniform": UniformTime(),
    "logit-normal": LogitNormalTime(LogitNormalTime.Params(mean=0.3, std=0.8)),
    "mode": ModeTime(),
    "mode-negative": ModeTime(ModeTime.Params(mode_scale=-0.5)),
    "cosmap": CosmapTime(),
}


def _at(fn, t: float) -> float:
    return float(fn(torch.tensor([t], dtype=torch.float64))[0])


@pytest.mark.parametrize("name", sorted(DENSITIES))
def test_each_density_integrates_to_one_and_to_its_cdf(name):
    distribution = DENSITIES[name]
    total, _ = integrate.quad(lambda t: _at(distribution.density, t), 0.0, 1.0, limit=200)
    assert abs(total - 1.0) < 1e-7
    for x in (0.1, 0.37, 0.5, 0.81):
        part, _ = integrate.quad(lambda t: _at(distribution.density, t), 0.0, x, limit=200)
        assert abs(part - _at(distribution.cdf, x)) < 1e-7


@pytest.mark.parametrize("name", sorted(DENSITIES))
def test_each_density_draws_pass_a_kolmogorov_smirnov_test_against_its_cdf(name):
    distribution = DENSITIES[name]
    draws = distribution.sample(10**5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    result = stats.kstest(draws.numpy(), lambda t: distribution.cdf(torch.as_tensor(t)).numpy())
    assert result.pvalue > 0.01
    # the test has power: the draws of another density fail it
    if name != "uniform":
        uniform = torch.rand(10**5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert (
            stats.kstest(uniform.numpy(), lambda t: distribution.cdf(torch.as_tensor(t)).numpy()).pvalue
            < 1e-6
        )


def _diffusers_sigmas(scheme: str, u: torch.Tensor, mode_scale: float = 1.29) -> torch.Tensor:
    """diffusers' training_utils.compute_density_for_timestep_sampling after its uniform draw ``u``:
    the noise level (its ``u``), written out from its source."""
    if scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return 1 - 1 / (torch.tan(math.pi / 2 * u) + 1)  # cosmap


@pytest.mark.parametrize(("scheme", "distribution"), [("mode", ModeTime()), ("cosmap", CosmapTime())])
def test_mode_and_cosmap_are_diffusers_noise_levels_mirrored(scheme, distribution):
    u = torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = distribution.sample(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(ours, 1 - _diffusers_sigmas(scheme, u), atol=1e-12, rtol=0)


def test_mode_scale_outside_the_increasing_range_is_refused():
    spec = {
        "data": "moons",
        "path": {"kind": "gaussian", "schedule": "ot"},
        "model": {"kind": "mlp", "hidden": [8]},
        "loss": {"kind": "cfm", "time": {"kind": "mode", "mode_scale": 2.0}},
    }
    with pytest.raises(
        ConfigError, match=r"\[loss.time\] key 'mode_scale': invalid value 2.0: mode_scale must"
    ):
        build_pipeline(spec, (), make_manager(warn=False))
