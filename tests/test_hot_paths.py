"""The fused hot paths give the same numbers as the plain formulas, with less work."""

from __future__ import annotations

import attrs
import pytest
import torch
from flowkit_gaussian.path import GaussianPath
from flowkit_simulators.dynamics import ExtensionSDE
from flowkit_simulators.simulators import EulerMaruyamaSimulator
from torch import nn

SCHEDULES = ["ot", "vp", "ve", "cosine"]


def times(path, n, gen):
    lo, hi = path.t_range
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_coefficients_equal_the_four_functions(schedule):
    s = GaussianPath(GaussianPath.Params(schedule=schedule)).schedule
    t = times(s, 257, torch.Generator().manual_seed(0))
    plain_values = (s.alpha(t), s.beta(t), s.d_alpha(t), s.d_beta(t))
    fused_values = attrs.astuple(s.coefficients(t), recurse=False)
    for fused, plain in zip(fused_values, plain_values, strict=True):
        assert torch.allclose(torch.as_tensor(fused, dtype=t.dtype).expand_as(plain), plain, rtol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sample_with_target_is_the_sample_and_the_conditional_velocity(schedule):
    path = GaussianPath(GaussianPath.Params(schedule=schedule))
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(300, 3, 2, generator=gen, dtype=torch.float64)
    noise = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    t = times(path, 300, gen)
    x, u = path.sample_with_target(z, t, noise)
    assert torch.allclose(x, path.sample(z, t, noise), rtol=1e-12, atol=1e-12)
    assert torch.allclose(u, path.target_velocity(x, z, t), rtol=1e-6, atol=1e-6)


class CountingField(nn.Module):
    """``u(x, t) = -x + t`` that counts its evaluations."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return -x + t[:, None]


class PlainScore(nn.Module):
    """The converted score computed the ordinary way (a second field evaluation)."""

    def __init__(self, score):
        super().__init__()
        self.score = score

    def forward(self, x, t):
        return self.score(x, t)


def test_extension_sde_evaluates_a_velocity_network_once_per_step():
    path = GaussianPath(GaussianPath.Params(schedule="ot"))
    field = CountingField()
    score = path.score_from_velocity(field)
    sde = ExtensionSDE(ExtensionSDE.Params(sigma=1.0), velocity=field, score=score)
    twice = ExtensionSDE(ExtensionSDE.Params(sigma=1.0), velocity=field, score=PlainScore(score))
    x0 = torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ts = torch.linspace(0.1, 0.9, 11, dtype=torch.float64)
    simulator = EulerMaruyamaSimulator()
    fast = simulator.simulate(sde, x0, ts, generator=torch.Generator().manual_seed(3))
    assert field.calls == 10
    field.calls = 0
    slow = simulator.simulate(twice, x0, ts, generator=torch.Generator().manual_seed(3))
    assert field.calls == 20
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-12)
