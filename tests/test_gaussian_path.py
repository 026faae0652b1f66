"""Schedules and the Gaussian path against docs/math.md: boundary values, derivatives, targets and
conversions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flowkit_gaussian.path import GaussianPath
from flowkit_gaussian.schedules import SINGULAR_EDGE, CosineSchedule, OTSchedule, VESchedule, VPSchedule
from scipy.integrate import solve_ivp

from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import ScoreModel, VectorField

F64 = torch.float64

SCHEDULES = {
    "ot": lambda: OTSchedule(),
    "ot-sigma": lambda: OTSchedule(OTSchedule.Params(sigma_min=0.05)),
    "vp": lambda: VPSchedule(),
    "ve": lambda: VESchedule(),
    "cosine": lambda: CosineSchedule(),
}


def grid(schedule, n=201, dtype=F64, margin=0.0):
    lo, hi = schedule.t_range
    return torch.linspace(lo + margin, hi - margin, n, dtype=dtype)


def path_for(name):
    return GaussianPath(GaussianPath.Params(schedule=SCHEDULES[name]()))


@pytest.fixture(params=sorted(SCHEDULES))
def schedule_name(request):
    return request.param


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------

VP_ALPHA_0 = math.exp(-0.5 * (0.1 + 0.5 * (20 - 0.1)))  # exp(-B(1)/2), docs/math.md: about 0.0066

BOUNDARIES = {  # (alpha_0, beta_0, alpha_1, beta_1) as docs/math.md gives them
    "ot": (0.0, 1.0, 1.0, 0.0),
    "ot-sigma": (0.0, 1.0, 1.0, 0.05),
    "vp": (VP_ALPHA_0, math.sqrt(1 - VP_ALPHA_0**2), 1.0, 0.0),
    "ve": (1.0, 50.0, 1.0, 0.01),
    "cosine": (0.0, 1.0, 1.0, 0.0),
}


def test_boundary_values(schedule_name):
    s = SCHEDULES[schedule_name]()
    ends = torch.tensor([0.0, 1.0], dtype=F64)
    alpha, beta = s.alpha(ends), s.beta(ends)
    a0, b0, a1, b1 = BOUNDARIES[schedule_name]
    assert abs(VP_ALPHA_0 - 0.0066) < 1e-4
    np.testing.assert_allclose(
        [alpha[0], beta[0], alpha[1], beta[1]], [a0, b0, a1, b1], atol=1e-12, rtol=1e-12
    )


def test_t_range_excludes_exactly_the_singular_ends():
    assert OTSchedule().t_range == (0.0, 1.0 - SINGULAR_EDGE)  # beta_1 = 0
    assert OTSchedule(OTSchedule.Params(sigma_min=0.01)).t_range == (0.0, 1.0)
    assert VPSchedule().t_range == (0.0, 1.0 - SINGULAR_EDGE)
    assert CosineSchedule().t_range == (0.0, 1.0 - SINGULAR_EDGE)
    assert VESchedule().t_range == (0.0, 1.0)
    assert VESchedule().prior_std == 50.0 and VPSchedule().prior_std == 1.0


def test_derivatives_match_finite_differences(schedule_name):
    s = SCHEDULES[schedule_name]()
    t = grid(s, margin=1e-3)
    h = 1e-6
    for value, derivative in ((s.alpha, s.d_alpha), (s.beta, s.d_beta)):
        fd = (value(t + h) - value(t - h)) / (2 * h)
        np.testing.assert_allclose(derivative(t), fd, rtol=1e-5, atol=1e-7)


def test_derivatives_match_autograd_on_the_whole_range(schedule_name):
    # Autograd is exact, so it also checks the last stretch before a singular end (VP's beta' ~ s^-1/2).
    s = SCHEDULES[schedule_name]()
    t = grid(s, n=1001).requires_grad_(True)
    for value, derivative in ((s.alpha, s.d_alpha), (s.beta, s.d_beta)):
        out = value(t)
        auto = (
            torch.autograd.grad(out.sum(), t)[0] if out.requires_grad else torch.zeros_like(t)
        )  # VE alpha = 1
        np.testing.assert_allclose(derivative(t.detach()), auto, rtol=1e-10, atol=1e-12)


def test_vp_matches_the_score_sde_marginals():
    # dX = -beta(s)/2 X ds + sqrt(beta(s)) dW from X_0 = z: mean coefficient m, variance v solve
    # m' = -beta m / 2, v' = -beta v + beta (an independent integration of the SDE's moments).
    s_vp = VPSchedule()

    def rate(s):
        return 0.1 + (20 - 0.1) * s

    sol = solve_ivp(
        lambda s, y: [-0.5 * rate(s) * y[0], -rate(s) * y[1] + rate(s)],
        (0.0, 1.0),
        [1.0, 0.0],
        dense_output=True,
        rtol=1e-11,
        atol=1e-13,
    )
    s_grid = np.linspace(0.0, 1.0 - SINGULAR_EDGE, 101)
    mean_coeff, variance = sol.sol(s_grid)
    t = torch.as_tensor(1.0 - s_grid)
    np.testing.assert_allclose(s_vp.alpha(t), mean_coeff, rtol=1e-8)
    np.testing.assert_allclose(s_vp.beta(t) ** 2, variance, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(s_vp.beta(t), np.sqrt(1 - mean_coeff**2), rtol=1e-6, atol=1e-10)


def test_ve_matches_the_score_sde_std():
    s_grid = np.linspace(0.0, 1.0, 101)
    t = torch.as_tensor(1.0 - s_grid)
    ve = VESchedule()
    np.testing.assert_allclose(ve.beta(t), 0.01 * (50 / 0.01) ** s_grid, rtol=1e-12)
    np.testing.assert_allclose(ve.alpha(t), 1.0)


def test_schedule_parameter_errors_name_the_parameter():
    with pytest.raises(ConfigError, match=r"beta_max \(0.05\) must be >= beta_min \(0.1\)"):
        VPSchedule.Params(beta_max=0.05)
    with pytest.raises(ValueError, match=r"sigma_max \(0.001\) must be > sigma_min \(0.01\)"):
        VESchedule.Params(sigma_max=0.001)
    with pytest.raises(ValueError, match="sigma_min"):
        OTSchedule.Params(sigma_min=1.0)


# ------------------------------------------------------------------------------------------------
# The Gaussian path
# ------------------------------------------------------------------------------------------------


def fixed_batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=F64) * 2 + 1
    eps = torch.randn(n, 3, generator=g, dtype=F64)
    return z, eps


def test_default_path_is_ot_and_takes_schedule_names():
    assert isinstance(GaussianPath().schedule, OTSchedule)
    path = GaussianPath(GaussianPath.Params(schedule={"kind": "vp", "beta_max": 10.0}))
    assert isinstance(path.schedule, VPSchedule) and path.schedule.beta_max == 10.0
    with pytest.raises(ConfigError, match="schedule: expected a Schedule or one of"):
        GaussianPath(GaussianPath.Params(schedule="linear"))


def test_target_velocity_is_the_time_derivative_of_the_sample_map(schedule_name):
    path = path_for(schedule_name)
    t = grid(path.schedule, n=64, margin=1e-3)
    z, eps = fixed_batch(t.shape[0])
    h = 1e-6
    fd = (path.sample(z, t + h, eps) - path.sample(z, t - h, eps)) / (2 * h)
    x = path.sample(z, t, eps)
    np.testing.assert_allclose(path.target_velocity(x, z, t), fd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(path.target_velocity_from_noise(z, eps, t), fd, rtol=1e-5, atol=1e-6)


def test_target_score_is_the_gradient_of_the_conditional_log_density(schedule_name):
    path = path_for(schedule_name)
    t = grid(path.schedule, n=64)
    z, eps = fixed_batch(t.shape[0])
    x = path.sample(z, t, eps).requires_grad_(True)
    alpha, beta = path.schedule.alpha(t)[:, None], path.schedule.beta(t)[:, None]
    log_density = torch.distributions.Normal(alpha * z, beta).log_prob(x).sum()
    (auto,) = torch.autograd.grad(log_density, x)
    np.testing.assert_allclose(path.target_score(x.detach(), z, t), auto, rtol=1e-6)
    np.testing.assert_allclose(path.target_score_from_noise(eps, t), auto, rtol=1e-6)


@pytest.mark.parametrize("sigma_min", [0.0, 0.01, 0.3])
def test_ot_target_has_the_closed_form(sigma_min):
    path = GaussianPath(GaussianPath.Params(schedule=OTSchedule(OTSchedule.Params(sigma_min=sigma_min))))
    t = grid(path.schedule, n=50)
    z, eps = fixed_batch(50)
    x = path.sample(z, t, eps)
    closed = z - (1 - sigma_min) * eps
    np.testing.assert_allclose(path.target_velocity_from_noise(z, eps, t), closed, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(path.target_velocity(x, z, t), closed, rtol=1e-6, atol=1e-9)
    if sigma_min == 0.0:  # x_t = (1 - t) x0 + t z, target z - x0
        np.testing.assert_allclose(x, (1 - t[:, None]) * eps + t[:, None] * z, rtol=1e-12)


class AffineField(VectorField):
    """A smooth non-trivial field, u(x, t) = A(t) x + b(t)."""

    def forward(self, x, t):
        return torch.stack([x[:, 1] * (1 + t) - 0.3 * x[:, 0], torch.sin(x[:, 0]) + t * x[:, 1] - 2.0], 1)


def test_score_velocity_conversion_round_trips(schedule_name):
    path = path_for(schedule_name)
    lo, hi = path.t_range
    t = torch.linspace(max(lo, path.conversion_t_min), hi, 97, dtype=F64)
    x = fixed_batch(97)[0][:, :2]
    field = AffineField()
    score = path.score_from_velocity(field)
    back = path.velocity_from_score(score)
    assert isinstance(score, ScoreModel) and isinstance(back, VectorField)
    np.testing.assert_allclose(back(x, t), field(x, t), rtol=1e-7, atol=1e-7)
    # and the other way: score -> velocity -> score
    as_score = path.score_from_velocity(path.velocity_from_score(score))
    np.testing.assert_allclose(as_score(x, t), score(x, t), rtol=1e-7, atol=1e-7)


def test_conversion_at_alpha_zero_is_clamped_to_conversion_t_min():
    path = path_for("ot")
    assert (
        path.conversion_clamps
        and not path_for("vp").conversion_clamps
        and not path_for("ve").conversion_clamps
    )
    x = fixed_batch(4)[0][:, :2]
    field = AffineField()
    back = path.velocity_from_score(path.score_from_velocity(field))
    t0 = torch.zeros(4, dtype=F64)
    np.testing.assert_allclose(back(x, t0), field(x, torch.full_like(t0, path.conversion_t_min)), rtol=1e-9)
    # velocity -> score needs no clamp: at alpha = 0 it is the score of N(0, beta^2 I), -x / beta^2
    np.testing.assert_allclose(path.velocity_to_score(x, field(x, t0), t0), -x, rtol=1e-12)


def test_conversion_agrees_with_the_conditional_targets(schedule_name):
    # The conversion is linear in (x, s), so it maps the conditional score to the conditional velocity.
    path = path_for(schedule_name)
    t = grid(path.schedule, n=64, margin=1e-3)
    z, eps = fixed_batch(64)
    x = path.sample(z, t, eps)
    u = path.score_to_velocity(x, path.target_score_from_noise(eps, t), t)
    np.testing.assert_allclose(u, path.target_velocity_from_noise(z, eps, t), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nothing_is_nan_or_inf_on_t_range(schedule_name, dtype):
    path = path_for(schedule_name)
    lo, hi = path.t_range
    t = torch.cat([torch.linspace(lo, hi, 2001, dtype=dtype), torch.tensor([lo, hi], dtype=dtype)])
    g = torch.Generator().manual_seed(1)
    z = torch.randn(t.shape[0], 2, generator=g).to(dtype) * 3
    x, eps = path.sample_with_noise(z, t, generator=g)
    field = AffineField()
    outputs = {
        "sample": x,
        "target_velocity": path.target_velocity(x, z, t),
        "target_score": path.target_score(x, z, t),
        "target_velocity_from_noise": path.target_velocity_from_noise(z, eps, t),
        "target_score_from_noise": path.target_score_from_noise(eps, t),
        "score_from_velocity": path.score_from_velocity(field)(x, t),
        "velocity_from_score": path.velocity_from_score(path.score_from_velocity(field))(x, t),
    }
    for name, value in outputs.items():
        assert value.dtype == dtype and torch.isfinite(value).all(), name


def test_targets_refuse_times_outside_t_range():
    path = path_for("vp")
    z, eps = fixed_batch(2)
    t = torch.tensor([0.5, 1.0], dtype=F64)
    with pytest.raises(
        FlowkitError, match=r"target_score: t must lie in the path's t_range \[0.0, 0.99999\]"
    ):
        path.target_score(z, z, t)
    with pytest.raises(FlowkitError, match="t must have shape"):
        path.sample(z, torch.zeros(3, dtype=F64), eps)


def test_prior_has_the_schedule_std():
    g = torch.Generator().manual_seed(0)
    for name, std in (("ot", 1.0), ("ve", 50.0)):
        draws = path_for(name).sample_prior((40000, 2), generator=g)
        assert draws.shape == (40000, 2) and draws.dtype == torch.float32
        assert abs(draws.std().item() / std - 1) < 0.01  # std error of the std: 1 / sqrt(2 * 80000) = 0.0025
        assert abs(draws.mean().item()) < 0.01 * std


def test_sample_is_deterministic_given_a_generator():
    path = path_for("cosine")
    z = torch.ones(5, 2)
    t = torch.full((5,), 0.3)
    a = path.sample(z, t, generator=torch.Generator().manual_seed(3))
    b = path.sample(z, t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
