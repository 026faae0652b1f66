"""The Gaussian-mixture dataset and its exact oracle (docs/math.md, "A ground truth to test against")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flowkit_gaussian.mixture import PRESETS, GaussianMixture, MixtureOracle
from flowkit_gaussian.path import GaussianPath
from flowkit_gaussian.schedules import CosineSchedule, OTSchedule, VESchedule, VPSchedule

from flowkit.errors import CapabilityError, ConfigError
from flowkit.interfaces import BuildContext, Dataset, ProbabilityPath, ScoreModel, VectorField

F64 = torch.float64

SCHEDULES = {
    "ot": lambda: OTSchedule(),
    "ot-sigma": lambda: OTSchedule(OTSchedule.Params(sigma_min=0.05)),
    "vp": lambda: VPSchedule(),
    "ve": lambda: VESchedule(),
    "cosine": lambda: CosineSchedule(),
}

# A 3D mixture with a full, a singular (rank-1) and an isotropic covariance, unequal weights.
MIXTURE_3D = GaussianMixture.Params(
    means=[[1.0, -2.0, 0.5], [-1.5, 1.0, 2.0], [0.0, 0.0, -1.0]],
    weights=[0.2, 0.5, 0.3],
    covariances=[
        [[0.5, 0.2, 0.1], [0.2, 0.4, -0.1], [0.1, -0.1, 0.3]],
        [[0.25, 0.25, 0.0], [0.25, 0.25, 0.0], [0.0, 0.0, 0.0]],
        [[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]],
    ],
)


def oracle_for(schedule_name, mixture_params=None):
    data = GaussianMixture(mixture_params)
    path = GaussianPath(GaussianPath.Params(schedule=SCHEDULES[schedule_name]()))
    return MixtureOracle.from_components(data, path), data, path


@pytest.fixture(params=sorted(SCHEDULES))
def schedule_name(request):
    return request.param


def direct_log_density(data, schedule, x, t):
    """log p_t(x) = logsumexp_k (log w_k + log N(x; alpha m_k, alpha^2 S_k + beta^2 I)), one k at a time."""
    weights, means, covs = data.mixture_parameters()
    alpha, beta = schedule.alpha(t), schedule.beta(t)
    d = means.shape[1]
    terms = []
    for w, m, s in zip(weights, means, covs, strict=True):
        cov = alpha[:, None, None] ** 2 * s + beta[:, None, None] ** 2 * torch.eye(d, dtype=F64)
        normal = torch.distributions.MultivariateNormal(alpha[:, None] * m, covariance_matrix=cov)
        terms.append(torch.log(w) + normal.log_prob(x))
    return torch.logsumexp(torch.stack(terms, 1), 1)


def points(n, d, seed=0, scale=2.5):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


@pytest.mark.parametrize("mixture", ["asymmetric", "3d"])
def test_score_is_the_gradient_of_the_log_density(schedule_name, mixture):
    params = MIXTURE_3D if mixture == "3d" else None
    oracle, data, path = oracle_for(schedule_name, params)
    lo, hi = path.t_range
    t = torch.linspace(lo, hi, 200, dtype=F64)
    x = points(200, data.shape[0]) * path.schedule.alpha(t)[:, None] + path.schedule.beta(t)[:, None]
    x.requires_grad_(True)
    log_p = direct_log_density(data, path.schedule, x, t)
    (auto,) = torch.autograd.grad(log_p.sum(), x)
    np.testing.assert_allclose(oracle.log_prob(x.detach(), t), log_p.detach(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(oracle.score(x.detach(), t), auto, rtol=1e-7, atol=1e-7)


def test_velocity_is_the_converted_score_where_alpha_is_positive(schedule_name):
    oracle, _, path = oracle_for(schedule_name)
    lo, hi = path.t_range
    t = torch.linspace(max(lo, 1e-3), hi, 300, dtype=F64)
    x = points(300, 2)
    converted = path.score_to_velocity(x, oracle.score(x, t), t)
    np.testing.assert_allclose(oracle.velocity(x, t), converted, rtol=1e-7, atol=1e-7)
    # the roles are the adapters of the same closed forms
    roles = oracle.roles()
    assert isinstance(roles["velocity"], VectorField) and isinstance(roles["score"], ScoreModel)
    np.testing.assert_allclose(roles["velocity"](x, t), oracle.velocity(x, t), rtol=0)
    np.testing.assert_allclose(path.velocity_from_score(roles["score"])(x, t), converted, rtol=1e-12)


def test_velocity_at_t0_is_finite_and_exact_for_ot():
    # At t = 0 (alpha = 0) x is independent of z, so E[z|x] = E[z] and u_0(x) = E[z] - x for OT.
    oracle, data, _ = oracle_for("ot")
    x = points(50, 2)
    t = torch.zeros(50, dtype=F64)
    weights, means, _ = data.mixture_parameters()
    np.testing.assert_allclose(oracle.velocity(x, t), weights @ means - x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(oracle.score(x, t), -x, rtol=1e-12)


def test_velocity_solves_the_continuity_equation(schedule_name):
    # d/dt log p_t(x) = -div u_t(x) - u_t(x) . grad log p_t(x): an independent check of the velocity,
    # with the time derivative by central differences and the divergence by autograd.
    oracle, _, path = oracle_for(schedule_name)
    lo, hi = path.t_range
    t = torch.linspace(lo + 0.01, hi - 0.01, 40, dtype=F64)
    x = (points(40, 2, seed=3) * 0.8).requires_grad_(True)
    u = oracle.velocity(x, t)
    div = sum(torch.autograd.grad(u[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    x = x.detach()
    h = 1e-5
    dt_log_p = (oracle.log_prob(x, t + h) - oracle.log_prob(x, t - h)) / (2 * h)
    rhs = -div - (u.detach() * oracle.score(x, t)).sum(1)
    np.testing.assert_allclose(dt_log_p, rhs, rtol=1e-5, atol=1e-5 * rhs.abs().max().item())


def test_posterior_mean_tends_to_x_at_the_data_end():
    # beta_1 = 0.05: E[z|x] is close to x, shrunk by S (S + 0.05^2)^-1
    oracle, _, _ = oracle_for("ot-sigma")
    x = points(20, 2, scale=1.0)
    t = torch.ones(20, dtype=F64)
    assert (oracle.posterior_mean(x, t) - x).abs().max() < 0.05
    # at t = 0 (OT) it is the data mean
    weights, means, _ = GaussianMixture().mixture_parameters()
    np.testing.assert_allclose(oracle.posterior_mean(x, 0 * t), (weights @ means).expand(20, 2), rtol=1e-12)


@pytest.mark.parametrize("mixture", ["asymmetric", "ring", "3d"])
def test_oracle_is_finite_on_t_range_in_float32(schedule_name, mixture):
    params = {"3d": MIXTURE_3D, "ring": GaussianMixture.Params(preset="ring")}.get(mixture)
    oracle, data, path = oracle_for(schedule_name, params)
    lo, hi = path.t_range
    t = torch.cat([torch.linspace(lo, hi, 1001), torch.tensor([lo, hi])])
    g = torch.Generator().manual_seed(0)
    # points from the marginal itself and far outside it
    x = path.sample(data.sample(t.shape[0], g), t, generator=g)
    x[::7] = 1e3 * torch.randn(x[::7].shape, generator=g)
    for name, value in (("velocity", oracle.velocity(x, t)), ("score", oracle.score(x, t))):
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name
    assert torch.isfinite(oracle.log_prob(x, t)).all()


def test_per_sample_times_agree_with_the_shared_time_path():
    # A sampler calls the oracle with one time for the batch (`ts[i].expand(B)`, stride 0), which
    # takes a fast path; per-sample times (a training-style batch) take the general one. Its cost
    # against an MLP is measured in benchmarks/bench_oracle.py (no timing is asserted here).
    oracle, _, _ = oracle_for("vp", GaussianMixture.Params(preset="ring"))
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(0.5).expand(4000)
    np.testing.assert_allclose(oracle.velocity(x, t), oracle.velocity(x, torch.full((4000,), 0.5)), rtol=1e-6)


def test_oracle_follows_the_module_to_a_dtype_and_keeps_float64_internally():
    oracle, _, _ = oracle_for("ot")
    assert oracle.means.dtype == F64 and not oracle.trainable
    x = torch.randn(3, 2, dtype=torch.float32)
    assert oracle(x, torch.full((3,), 0.5)).dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------------


def test_default_is_the_asymmetric_preset_and_samples_match_its_moments():
    data = GaussianMixture()
    assert data.shape == (2,) and data.num_components == 3
    weights, means, covs = data.mixture_parameters()
    np.testing.assert_allclose(weights, np.array(PRESETS["asymmetric"]["weights"]))
    n = 200_000
    z = data.sample(n, torch.Generator().manual_seed(0)).to(F64)
    assert z.dtype == F64 and z.shape == (n, 2)
    mean = weights @ means
    centred = means - mean
    cov = (weights[:, None, None] * (covs + centred[:, :, None] * centred[:, None, :])).sum(0)
    # standard errors: sqrt(var / n) is about 0.004 for the mean; the covariance ~ 0.01
    np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(torch.cov(z.T), cov, atol=0.05)


def test_samples_are_deterministic_and_float32():
    data = GaussianMixture(MIXTURE_3D)
    a = data.sample(100, torch.Generator().manual_seed(1))
    b = data.sample(100, torch.Generator().manual_seed(1))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert isinstance(data, Dataset) and data.shape == (3,)
    # the rank-1 component (covariance 0.25 (1, 1, 0)(1, 1, 0)^T) stays on its line through m_1
    big = data.sample(4000, torch.Generator().manual_seed(2)).to(F64)
    offset = big - torch.tensor([-1.5, 1.0, 2.0], dtype=F64)
    on_line = (offset[:, 0] - offset[:, 1]).abs().lt(1e-5) & offset[:, 2].abs().lt(1e-5)
    assert abs(on_line.double().mean().item() - 0.5) < 0.04  # weight 0.5; binomial std 0.008


def test_samples_are_float32_with_the_moments_when_the_default_dtype_is_float64():
    # The cached factors are float32: noise drawn in the default dtype (float64 here) would not einsum
    # with them.
    data = GaussianMixture()
    weights, means, covs = data.mixture_parameters()
    n = 200_000
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        z = data.sample(n, torch.Generator().manual_seed(0))
    finally:
        torch.set_default_dtype(before)
    assert z.shape == (n, 2) and z.dtype == torch.float32
    assert torch.equal(z, data.sample(n, torch.Generator().manual_seed(0)))  # as under float32
    mean = weights @ means
    centred = means - mean
    cov = (weights[:, None, None] * (covs + centred[:, :, None] * centred[:, None, :])).sum(0)
    z = z.to(F64)
    np.testing.assert_allclose(z.mean(0), mean, atol=0.02)  # standard errors as in the float32 test
    np.testing.assert_allclose(torch.cov(z.T), cov, atol=0.05)


def test_log_prob_is_the_mixture_density():
    data = GaussianMixture()
    x = points(30, 2)
    # at t = 1 with sigma_min = 0 the path's marginal is p_data
    weights, means, covs = data.mixture_parameters()
    direct = torch.logsumexp(
        torch.stack(
            [
                torch.log(w) + torch.distributions.MultivariateNormal(m, covariance_matrix=s).log_prob(x)
                for w, m, s in zip(weights, means, covs, strict=True)
            ],
            1,
        ),
        1,
    )
    np.testing.assert_allclose(data.log_prob(x), direct, rtol=1e-12)
    ot = MixtureOracle.from_components(data, GaussianPath())
    np.testing.assert_allclose(ot.log_prob(x, torch.ones(30, dtype=F64)), direct, rtol=1e-10)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"means": [[0.0, 0.0], [1.0]]}, r"means: every mean must have the same number"),
        ({"means": [[0.0], [1.0]], "weights": [1.0]}, r"weights: expected 2 values \(one per mean\), got 1"),
        ({"means": [[0.0], [1.0]], "weights": [1.0, -1.0]}, r"weights: must be >= 0 with a positive sum"),
        ({"means": [[0.0], [1.0]], "stds": [1.0, 2.0, 3.0]}, r"stds: expected 1 or 2 values"),
        ({"means": [[0.0], [1.0]], "stds": [-1.0]}, r"stds: must be >= 0"),
        (
            {"means": [[0.0, 0.0]], "covariances": [[[1.0, 2.0], [2.0, 1.0]]]},
            r"covariances\[0\]: must be positive semi-definite, but its smallest eigenvalue is -1",
        ),
        (
            {"means": [[0.0, 0.0]], "covariances": [[[1.0, 0.5], [0.0, 1.0]]]},
            r"covariances\[0\]: must be symmetric",
        ),
        (
            {"means": [[0.0, 0.0]], "covariances": [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]},
            r"covariances: expected 1 matrices \(one per mean\) of size 2 x 2",
        ),
        (
            {"means": [[0.0]], "stds": [1.0], "covariances": [[[1.0]]]},
            r"stds, covariances: give one of them",
        ),
        ({"weights": [1.0, 2.0]}, r"weights: given without means; the preset 'asymmetric' fixes its own"),
        ({"means": [[0.0, float("nan")]]}, r"means: every value must be finite"),
    ],
)
def test_bad_mixture_parameters_are_named(params, message):
    with pytest.raises(ConfigError, match=message):
        GaussianMixture.Params(**params)


def test_custom_isotropic_mixture():
    data = GaussianMixture(GaussianMixture.Params(means=[[0.0], [10.0]], stds=[0.5]))
    weights, _, covs = data.mixture_parameters()
    np.testing.assert_allclose(weights, [0.5, 0.5])
    np.testing.assert_allclose(covs[:, 0, 0], [0.25, 0.25])


# ------------------------------------------------------------------------------------------------
# Building from a pipeline context
# ------------------------------------------------------------------------------------------------


class OtherPath(ProbabilityPath):
    def sample_prior(self, shape, generator=None, device=None):
        return torch.zeros(shape)

    def sample(self, z, t, noise=None, generator=None):
        return z

    def target_velocity(self, x, z, t):
        return z


class OtherData(Dataset):
    shape = (2,)

    def sample(self, n, generator=None, device=None):
        return torch.zeros(n, 2)


def test_from_params_reads_the_context():
    data, path = GaussianMixture(), GaussianPath(GaussianPath.Params(schedule=VPSchedule()))
    oracle = MixtureOracle.from_params(MixtureOracle.Params(), BuildContext(dataset=data, path=path))
    assert oracle.schedule is path.schedule and oracle.means.shape == (3, 2)
    other_data = OtherData()
    other_data.registered_name = "moons"
    with pytest.raises(
        CapabilityError, match=r"needs data with known mixture parameters, but \[data\] is 'moons'"
    ):
        MixtureOracle.from_params(MixtureOracle.Params(), BuildContext(dataset=other_data, path=path))
    with pytest.raises(CapabilityError, match=r'use \[path\] kind = "gaussian"'):
        MixtureOracle.from_params(MixtureOracle.Params(), BuildContext(dataset=data, path=OtherPath()))
    with pytest.raises(CapabilityError, match=r'use \[data\] kind = "gaussian-mixture"'):
        MixtureOracle.from_params(MixtureOracle.Params(), BuildContext(dataset=None, path=path))
