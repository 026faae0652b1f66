"""CFM and DSM: targets, roles, capability errors, and the gradient identities of docs/math.md ("Losses").

The gradient tests check ``grad L_CFM == grad L_FM`` and ``grad L_DSM == grad L_SM`` (same weighting)
for a small fixed network, with the exact marginal field of a Gaussian mixture (the oracle) as the
flow-matching target. Both losses are evaluated on the same draws ``(z, t, eps)``, so their gradient
difference is a mean of i.i.d. zero-mean terms. The draws are split into ``K`` chunks; with the chunk
means ``d_c`` of the difference (``P`` parameters), Hotelling's statistic
``T^2 = K dbar^T S^{-1} dbar`` has ``(K - P) / (P (K - 1)) T^2 ~ F(P, K - P)`` when the gradients agree.
The tests require a p-value above 1e-4 (all draws are seeded, so the outcome is fixed) and show the
test has power: a target off by a small amount gives a p-value below 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flowkit_gaussian.mixture import GaussianMixture, MixtureOracle
from flowkit_gaussian.path import GaussianPath
from flowkit_gaussian.schedules import OTSchedule, VPSchedule
from flowkit_losses.cfm import CFMLoss
from flowkit_losses.common import NetworkScore, NetworkVelocity, NoisePredictionScore
from flowkit_losses.dsm import DSMLoss
from scipy import stats
from torch import nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import ProbabilityPath, ScoreModel, VectorField

F64 = torch.float64


class TinyNet(nn.Module):
    """A fixed small network ``(x (B, 2), t (B,)) -> (B, 2)`` with 50 parameters."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(3, 8).to(F64)
        self.out = nn.Linear(8, 2).to(F64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.7)

    def forward(self, x, t):
        return self.out(torch.tanh(self.hidden(torch.cat([x, t[:, None]], 1))))


def gaussian_path(schedule):
    return GaussianPath(GaussianPath.Params(schedule=schedule))


def draws(n, data, seed):
    g = torch.Generator().manual_seed(seed)
    z = data.sample(n, g).to(F64)
    eps = torch.randn(n, 2, generator=g, dtype=F64)
    return z, eps, g


def flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def gradient_agreement(loss_a, loss_b, params, chunks):
    """p-value of Hotelling's test that E[grad a - grad b] = 0, and |mean diff| / |mean grad b|."""
    diffs, grads_b = [], []
    for chunk in chunks:
        a, b = loss_a(*chunk), loss_b(*chunk)
        grad_b = flat_grad(b, params)
        diffs.append(flat_grad(a, params) - grad_b)
        grads_b.append(grad_b)
    d = torch.stack(diffs)
    k, p = d.shape
    mean = d.mean(0)
    t2 = k * mean @ torch.linalg.solve(torch.cov(d.T), mean)
    f_stat = (k - p) / (p * (k - 1)) * t2.item()
    relative = (mean.norm() / torch.stack(grads_b).mean(0).norm()).item()
    return stats.f.sf(f_stat, p, k - p), relative


def chunked(*tensors, size):
    return list(zip(*(t.split(size) for t in tensors), strict=True))


N_CHUNKS, CHUNK = 400, 64  # 25600 draws; K = 400 chunk means for P = 50 parameters


@pytest.mark.parametrize("schedule", [OTSchedule(), VPSchedule()], ids=["ot", "vp"])
def test_cfm_and_fm_have_the_same_gradient(schedule):
    data, path = GaussianMixture(), gaussian_path(schedule)
    oracle = MixtureOracle.from_components(data, path)
    wrong = MixtureOracle.from_components(
        GaussianMixture(GaussianMixture.Params(means=[[-1.8, -1.0], [2.0, -1.0], [0.0, 2.0]], stds=[0.6])),
        path,
    )
    loss, net = CFMLoss(), TinyNet()
    role = loss.model_role(net, path)
    z, eps, g = draws(N_CHUNKS * CHUNK, data, seed=1)
    t = loss.sample_times(z.shape[0], path, g, dtype=F64)
    x = path.sample(z, t, eps)
    exact, off = oracle.velocity(x, t), wrong.velocity(x, t)
    chunks = chunked(z, t, eps, x, exact, off, size=CHUNK)

    def cfm(z, t, eps, x, exact, off):
        return loss.loss_at(role, path, z, t, eps)

    def fm(z, t, eps, x, exact, off):
        return (role(x, t) - exact).square().mean()

    def fm_wrong(z, t, eps, x, exact, off):
        return (role(x, t) - off).square().mean()

    params = list(net.parameters())
    p_value, relative = gradient_agreement(cfm, fm, params, chunks)
    assert p_value > 1e-4, (p_value, relative)
    assert relative < 0.1
    p_wrong, relative_wrong = gradient_agreement(cfm, fm_wrong, params, chunks)
    assert p_wrong < 1e-12, (p_wrong, relative_wrong)


@pytest.mark.parametrize("weighting", ["noise", "score"])
def test_dsm_and_score_matching_have_the_same_gradient(weighting):
    data, path = GaussianMixture(), gaussian_path(VPSchedule())
    oracle = MixtureOracle.from_components(data, path)
    loss, net = DSMLoss(DSMLoss.Params(weighting=weighting)), TinyNet(seed=2)
    role = loss.model_role(net, path)
    z, eps, g = draws(N_CHUNKS * CHUNK, data, seed=3)
    if weighting == "noise":
        t = loss.sample_times(z.shape[0], path, g, dtype=F64)
    else:  # the plain weighting's target -eps/beta has infinite variance as beta -> 0: stay away from t = 1
        t = 0.9 * torch.rand(z.shape[0], generator=g, dtype=F64)
    x = path.sample(z, t, eps)
    beta = path.schedule.beta(t)[:, None]
    weight = beta if weighting == "noise" else torch.ones_like(beta)
    exact = oracle.score(x, t)
    off = exact + 0.1 / beta  # a score off by a small multiple of the noise scale
    chunks = chunked(z, t, eps, x, weight, exact, off, size=CHUNK)

    def dsm(z, t, eps, x, weight, exact, off):
        return loss.loss_at(role, path, z, t, eps)

    def sm(z, t, eps, x, weight, exact, off):
        return (weight * (role(x, t) - exact)).square().mean()

    def sm_wrong(z, t, eps, x, weight, exact, off):
        return (weight * (role(x, t) - off)).square().mean()

    params = list(net.parameters())
    p_value, relative = gradient_agreement(dsm, sm, params, chunks)
    assert p_value > 1e-4, (p_value, relative)
    p_wrong, _ = gradient_agreement(dsm, sm_wrong, params, chunks)
    assert p_wrong < 1e-12


# ------------------------------------------------------------------------------------------------
# Values, roles and draws
# ------------------------------------------------------------------------------------------------


def test_cfm_on_the_ot_path_is_the_straight_line_regression():
    # docs/math.md: with sigma_min = 0, E || u((1 - t) x0 + t z) - (z - x0) ||^2
    path, loss, net = gaussian_path(OTSchedule()), CFMLoss(), TinyNet()
    role = loss.model_role(net, path)
    g = torch.Generator().manual_seed(0)
    z, x0 = torch.randn(256, 2, generator=g, dtype=F64), torch.randn(256, 2, generator=g, dtype=F64)
    t = torch.rand(256, generator=g, dtype=F64)
    expected = (net((1 - t[:, None]) * x0 + t[:, None] * z, t) - (z - x0)).square().mean()
    assert torch.allclose(loss.loss_at(role, path, z, t, x0), expected, rtol=1e-12)


def test_call_draws_t_then_noise_from_the_generator():
    path, net = gaussian_path(VPSchedule()), TinyNet()
    z = torch.randn(64, 2, dtype=F64)
    for loss in (CFMLoss(), DSMLoss(), DSMLoss(DSMLoss.Params(weighting="score"))):
        role = loss.model_role(net, path)
        value = loss(role, path, z, generator=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        t = loss.sample_times(64, path, g, dtype=F64)
        noise = torch.randn(z.shape, generator=g, dtype=F64)
        assert torch.equal(value, loss.loss_at(role, path, z, t, noise))
        assert value.shape == () and value.item() > 0


def test_roles_have_the_right_interfaces_and_parametrizations():
    path, net = gaussian_path(VPSchedule()), TinyNet()
    x, t = torch.randn(16, 2, dtype=F64), torch.rand(16, dtype=F64) * 0.9
    velocity = CFMLoss().model_role(net, path)
    assert isinstance(velocity, NetworkVelocity) and isinstance(velocity, VectorField)
    assert torch.equal(velocity(x, t), net(x, t))
    noise_score = DSMLoss().model_role(net, path)
    assert isinstance(noise_score, NoisePredictionScore) and isinstance(noise_score, ScoreModel)
    assert torch.allclose(noise_score(x, t), -net(x, t) / path.schedule.beta(t)[:, None], rtol=1e-12)
    plain = DSMLoss(DSMLoss.Params(weighting="score")).model_role(net, path)
    assert isinstance(plain, NetworkScore) and torch.equal(plain(x, t), net(x, t))
    assert list(velocity.parameters()) == list(net.parameters())  # the role trains the network itself


def test_noise_weighting_equals_the_beta_weighted_score_loss_for_any_score_model():
    # ||beta s + eps||^2 is what the noise-prediction shortcut ||net - eps||^2 computes
    path, net = gaussian_path(OTSchedule()), TinyNet()
    loss = DSMLoss()
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(128, 2, generator=g, dtype=F64), torch.randn(128, 2, generator=g, dtype=F64)
    t = loss.sample_times(128, path, g, dtype=F64)
    shortcut = loss.loss_at(loss.model_role(net, path), path, z, t, eps)
    # The noise-prediction role scales its input by 1 / sqrt(alpha^2 + beta^2) (EDM's c_in).
    sched = path.schedule

    def score(x, t):
        c_in = torch.rsqrt(sched.alpha(t) ** 2 + sched.beta(t) ** 2)[:, None]
        return -net(x * c_in, t) / sched.beta(t)[:, None]

    generic_model = NetworkScore(score)
    assert torch.allclose(loss.loss_at(generic_model, path, z, t, eps), shortcut, rtol=1e-9)


@pytest.mark.parametrize("how", ["uniform", "logit-normal"])
def test_times_lie_in_t_range_with_the_requested_law(how):
    path = gaussian_path(OTSchedule())
    loss = CFMLoss(CFMLoss.Params(t_sampling=how))
    t = loss.sample_times(100_000, path, torch.Generator().manual_seed(0), dtype=F64)
    lo, hi = path.t_range
    assert t.min() >= lo and t.max() <= hi
    unit = (t - lo) / (hi - lo)
    if how == "uniform":  # Kolmogorov-Smirnov against U[0, 1]
        assert stats.kstest(unit.numpy(), "uniform").pvalue > 1e-3
    else:  # logit(t) ~ N(0, 1)
        assert stats.kstest(torch.logit(unit).numpy(), "norm").pvalue > 1e-3


class NoScorePath(ProbabilityPath):
    """A path without a conditional score (straight lines from a point mass at 0)."""

    def sample_prior(self, shape, generator=None, device=None):
        return torch.zeros(shape)

    def sample(self, z, t, noise=None, generator=None):
        return t[:, None] * z

    def target_velocity(self, x, z, t):
        return z


class ScoreButNotGaussian(NoScorePath):
    provides_score = True

    def sample(self, z, t, noise=None, generator=None):
        return t[:, None] * z + (1 - t[:, None]) * noise

    def target_score(self, x, z, t):
        return -(x - t[:, None] * z) / (1 - t[:, None]) ** 2


def test_dsm_refuses_a_path_without_a_score():
    path = NoScorePath()
    path.registered_name = "straight"
    with pytest.raises(
        CapabilityError,
        match=r"loss 'dsm' trains a score, but path 'straight' provides no conditional score; "
        r'use \[loss\] kind = "cfm"',
    ):
        DSMLoss().check(path)
    with pytest.raises(CapabilityError, match="provides no conditional score"):
        DSMLoss().model_role(TinyNet(), path)
    CFMLoss().check(path)  # CFM trains on any path


def test_dsm_noise_weighting_needs_a_gaussian_path_and_score_weighting_does_not():
    path = ScoreButNotGaussian()
    with pytest.raises(CapabilityError, match=r'weighting = "noise" needs a Gaussian path'):
        DSMLoss().check(path)
    loss = DSMLoss(DSMLoss.Params(weighting="score"))
    loss.check(path)
    net = TinyNet()
    z, eps, t = torch.randn(32, 2, dtype=F64), torch.randn(32, 2, dtype=F64), torch.rand(32, dtype=F64) * 0.9
    value = loss.loss_at(loss.model_role(net, path), path, z, t, eps)
    x = path.sample(z, t, eps)
    assert torch.allclose(value, (net(x, t) - path.target_score(x, z, t)).square().mean())


def test_cfm_on_a_generic_path_uses_its_target_velocity():
    path, net, loss = NoScorePath(), TinyNet(), CFMLoss()
    z, t = torch.randn(32, 2, dtype=F64), torch.rand(32, dtype=F64)
    value = loss.loss_at(loss.model_role(net, path), path, z, t, torch.zeros(32, 2, dtype=F64))
    assert torch.allclose(value, (net(t[:, None] * z, t) - z).square().mean())


def test_losses_are_finite_at_the_ends_of_t_range():
    # the noise forms never divide by the vanishing beta at t = t_range[1]
    path = gaussian_path(OTSchedule())
    z = torch.randn(8, 2)
    t = torch.tensor([0.0, 1.0 - 1e-5] * 4)
    noise = torch.randn(8, 2)
    net32 = TinyNet().float()
    for loss in (CFMLoss(), DSMLoss(), DSMLoss(DSMLoss.Params(weighting="score"))):
        assert np.isfinite(loss.loss_at(loss.model_role(net32, path), path, z, t, noise).item())
