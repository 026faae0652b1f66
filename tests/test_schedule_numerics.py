"""Schedule numerics: every fused ``coefficients()`` against the four functions, every derivative
against a finite difference, the CFM target against its closed form, and the float32 accuracy of the
velocity -> score conversion near the data end (docs/math.md, "Gaussian paths").

Non-default parameters throughout: a fused override that ignores a parameter (OT's ``d_beta = -1``
whatever ``sigma_min``) passes every test run only at the defaults.
"""

from __future__ import annotations

import attrs
import pytest
import torch
from flowkit_gaussian.mixture import GaussianMixture, MixtureOracle
from flowkit_gaussian.path import GaussianPath
from flowkit_gaussian.schedules import CosineSchedule, OTSchedule, VESchedule, VPSchedule
from torch import Tensor

from flowkit.interfaces import Coefficients

F64 = torch.float64

SCHEDULES = {
    "ot": lambda: OTSchedule(),
    "ot-0.1": lambda: OTSchedule(OTSchedule.Params(sigma_min=0.1)),
    "ot-0.3": lambda: OTSchedule(OTSchedule.Params(sigma_min=0.3)),
    "vp": lambda: VPSchedule(),
    "vp-0.5-5": lambda: VPSchedule(VPSchedule.Params(beta_min=0.5, beta_max=5.0)),
    "vp-flat": lambda: VPSchedule(VPSchedule.Params(beta_min=2.0, beta_max=2.0)),
    "ve": lambda: VESchedule(),
    "ve-0.1-5": lambda: VESchedule(VESchedule.Params(sigma_min=0.1, sigma_max=5.0)),
    "cosine": lambda: CosineSchedule(),
}


@pytest.fixture(params=sorted(SCHEDULES))
def schedule(request):
    return SCHEDULES[request.param]()


def grid(schedule, n=257, dtype=F64, margin=0.0):
    """``n`` times spanning the schedule's ``t_range`` (both ends included), shrunk by ``margin``."""
    lo, hi = schedule.t_range
    return torch.linspace(lo + margin, hi - margin, n, dtype=dtype)


def plain(schedule, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return schedule.alpha(t), schedule.beta(t), schedule.d_alpha(t), schedule.d_beta(t)


# ------------------------------------------------------------------------------------------------
# Fused coefficients and derivatives
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_fused_coefficients_equal_the_four_functions(schedule, dtype):
    t = grid(schedule, dtype=dtype)
    fused = schedule.coefficients(t)
    assert isinstance(fused, Coefficients)
    names = ("alpha", "beta", "d_alpha", "d_beta")
    for name, value, expected in zip(
        names, attrs.astuple(fused, recurse=False), plain(schedule, t), strict=True
    ):
        if isinstance(value, float):  # a constant: the same number at every t
            value = torch.full_like(expected, value)
        else:
            assert isinstance(value, Tensor) and value.shape == t.shape and value.dtype == dtype, name
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-15, msg=name)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1, 0.3])
def test_ot_fused_coefficients_have_the_closed_form(sigma_min):
    s = OTSchedule(OTSchedule.Params(sigma_min=sigma_min))
    t = grid(s)
    c = s.coefficients(t)
    assert torch.equal(c.alpha, t)
    torch.testing.assert_close(c.beta, 1 - (1 - sigma_min) * t, rtol=1e-15, atol=1e-15)
    assert c.d_alpha == 1.0 and c.d_beta == -(1.0 - sigma_min)


def test_derivatives_match_central_differences(schedule):
    # float64, h = 1e-6: truncation h^2 f''' / 6 and rounding 1e-16 |f| / h both far below 1e-7
    # relative, also at 1e-3 before VP's singular end (beta' ~ s^-1/2) and for VE's steep exponential.
    t = grid(schedule, margin=1e-3)
    h = 1e-6
    fused = schedule.coefficients(t)
    for value, derivative, fused_derivative in (
        (schedule.alpha, schedule.d_alpha, fused.d_alpha),
        (schedule.beta, schedule.d_beta, fused.d_beta),
    ):
        difference = (value(t + h) - value(t - h)) / (2 * h)
        torch.testing.assert_close(derivative(t), difference, rtol=1e-6, atol=1e-9)
        fused_derivative = torch.as_tensor(fused_derivative, dtype=F64).expand_as(t)
        torch.testing.assert_close(fused_derivative, difference, rtol=1e-6, atol=1e-9)


def test_d_alpha_split_is_an_exact_split_of_d_alpha(schedule):
    split = getattr(schedule, "d_alpha_split", None)
    if split is None:
        pytest.skip(f"{type(schedule).__name__} has no d_alpha_split")
    t = grid(schedule)
    k, remainder = split(t)
    assert isinstance(k, float) and remainder.shape == t.shape
    torch.testing.assert_close(k * schedule.alpha(t) + remainder, schedule.d_alpha(t), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# The CFM target
# ------------------------------------------------------------------------------------------------


def batch(n, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=F64) * 2.0 + 0.5
    eps = torch.randn(n, 3, generator=g, dtype=F64)
    return z.to(dtype), eps.to(dtype)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1, 0.3])
def test_cfm_target_has_the_ot_closed_form(sigma_min):
    path = GaussianPath(GaussianPath.Params(schedule={"kind": "ot", "sigma_min": sigma_min}))
    t = grid(path.schedule, n=200)
    z, eps = batch(200)
    x, u = path.sample_with_target(z, t, eps)
    tt = t[:, None]
    torch.testing.assert_close(x, tt * z + (1 - (1 - sigma_min) * tt) * eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u, z - (1 - sigma_min) * eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_cfm_target_is_alpha_z_plus_beta_noise_and_its_derivative(name):
    path = GaussianPath(GaussianPath.Params(schedule=SCHEDULES[name]()))
    t = grid(path.schedule, n=200)
    z, eps = batch(200, seed=1)
    x, u = path.sample_with_target(z, t, eps)
    alpha, beta, d_alpha, d_beta = (c[:, None] for c in plain(path.schedule, t))
    torch.testing.assert_close(x, alpha * z + beta * eps, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u, d_alpha * z + d_beta * eps, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# velocity -> score in float32
# ------------------------------------------------------------------------------------------------

CONVERSION_SCHEDULES = {
    "ot": {"kind": "ot"},
    "ot-0.1": {"kind": "ot", "sigma_min": 0.1},
    "vp": "vp",
    "ve": "ve",
    "cosine": "cosine",
}
CONVERSION_TIMES = [0.5, 1 - 1e-3, 1 - 1e-4, 1 - 1e-5]


def reference_score(schedule, x: Tensor, u: Tensor, t: Tensor) -> Tensor:
    """The plain formula in float64: ``(alpha u - alpha' x) / (alpha' beta^2 - alpha beta beta')``."""
    alpha, beta, d_alpha, d_beta = (c[:, None] for c in plain(schedule, t.to(F64)))
    x, u = x.to(F64), u.to(F64)
    return (alpha * u - d_alpha * x) / (d_alpha * beta * beta - alpha * beta * d_beta)


@pytest.mark.parametrize("t_value", CONVERSION_TIMES)
@pytest.mark.parametrize("name", sorted(CONVERSION_SCHEDULES))
def test_velocity_to_score_is_accurate_in_float32_near_the_data(name, t_value):
    # Marginal velocities of a mixture (the oracle): the score stays O(1) as t -> 1 while u ~ x / t for
    # OT, so the plain numerator t u - x cancels (1.8e-1 relative at t = 1 - 1e-5 before the split).
    # Measured against the same formula in float64 on the same float32 inputs, so only the
    # conversion's own rounding counts: after the split every schedule stays below 1e-5 per sample.
    path = GaussianPath(GaussianPath.Params(schedule=CONVERSION_SCHEDULES[name]))
    data = GaussianMixture(GaussianMixture.Params(preset="asymmetric"))
    oracle = MixtureOracle.from_components(data, path)
    g = torch.Generator().manual_seed(0)
    n = 2048
    t = torch.full((n,), t_value, dtype=torch.float32)
    z = data.sample(n, generator=g).to(F64)
    x = path.sample(z, t.to(F64), torch.randn(z.shape, generator=g, dtype=F64))
    u = oracle.velocity(x, t.to(F64))
    x, u = x.float(), u.float()
    score = path.velocity_to_score(x, u, t)
    assert score.dtype == torch.float32
    expected = reference_score(path.schedule, x, u, t)
    error = score.to(F64) - expected
    assert (error.norm() / expected.norm()).item() <= 1e-5
    assert (error.norm(dim=1) / expected.norm(dim=1)).max().item() <= 1e-4


def test_velocity_to_score_in_float64_is_the_plain_formula(schedule):
    path = GaussianPath(GaussianPath.Params(schedule=schedule))
    lo, hi = path.t_range
    t = torch.linspace(lo, hi, 101, dtype=F64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(101, 2, generator=g, dtype=F64) * 3
    u = torch.randn(101, 2, generator=g, dtype=F64) * 3
    torch.testing.assert_close(
        path.velocity_to_score(x, u, t), reference_score(path.schedule, x, u, t), rtol=1e-9, atol=1e-9
    )
