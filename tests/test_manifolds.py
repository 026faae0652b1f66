"""Riemannian flow matching (plugins/flowkit_manifolds): the geometry of the sphere and the flat torus,
the geodesic path, the projected solvers, the likelihood on a manifold, the data and the metric."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flowkit_manifolds.datasets import TorusCheckerboard, VMFMixture, sample_vmf, vmf_log_normalizer
from flowkit_manifolds.geometry import TWO_PI, FlatTorus, Sphere
from flowkit_manifolds.metric import GeodesicW2
from flowkit_manifolds.network import TangentMLP
from flowkit_manifolds.path import GeodesicPath
from flowkit_manifolds.simulators import ManifoldEuler, ManifoldMidpoint, ManifoldRK4

from flowkit.engine.likelihood import log_likelihood
from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import ODE

SPHERE, TORUS = Sphere(), FlatTorus()
SPHERE_SHORT = ["train.steps=2000", "train.batch_size=512"]
TORUS_SHORT = ["train.steps=2000"]
SIMULATORS = {"euler": ManifoldEuler, "midpoint": ManifoldMidpoint, "rk4": ManifoldRK4}


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sphere_points(n: int, dim: int = 3, seed: int = 0) -> torch.Tensor:
    return SPHERE.project(torch.randn(n, dim, generator=generator(seed), dtype=torch.float64))


def torus_points(n: int, dim: int = 2, seed: int = 0) -> torch.Tensor:
    return TWO_PI * torch.rand(n, dim, generator=generator(seed), dtype=torch.float64)


def path(manifold: str) -> GeodesicPath:
    return GeodesicPath(GeodesicPath.Params(manifold=manifold))


class Field(ODE):
    """An ODE of a given drift ``field(x, t)``, constrained by ``constraint``."""

    def __init__(self, field, constraint=None):
        super().__init__()
        self.field, self.constraint = field, constraint

    def drift(self, x, t):
        return self.field(x, t)


def rotation(x, t):
    """The rotation about (1, 2, 3): tangent and divergence-free, so it keeps the uniform measure."""
    axis = torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype) / math.sqrt(14.0)
    return torch.linalg.cross(axis.expand_as(x), x)


def swirl(x, t):
    """A time-dependent field with a gradient part (not a Killing field: no closed-form flow)."""
    a = torch.tensor([0.3, -0.5, 0.8], dtype=x.dtype)
    return SPHERE.to_tangent(x, a.expand_as(x) * torch.cos(3 * t)[:, None]) + 1.5 * rotation(x, t)


# ---------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_sphere_exp_and_log_are_inverse(dim):
    x = sphere_points(500, dim)
    u = SPHERE.to_tangent(x, torch.randn(500, dim, generator=generator(1), dtype=torch.float64))
    u = (
        u
        / u.norm(dim=1, keepdim=True)
        * torch.rand(500, 1, generator=generator(2), dtype=torch.float64)
        * 3.0
    )
    y = SPHERE.exp(x, u)
    assert torch.allclose(y.norm(dim=1), torch.ones(500, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(SPHERE.log(x, y), u, atol=1e-9)
    z = sphere_points(500, dim, seed=3)
    assert torch.allclose(SPHERE.exp(x, SPHERE.log(x, z)), z, atol=1e-9)
    assert torch.allclose(SPHERE.dist(x, z), torch.acos((x * z).sum(1).clamp(-1, 1)), atol=1e-6)


def test_sphere_log_of_a_point_itself_is_zero_and_exp_of_zero_is_the_point():
    x = sphere_points(10)
    assert torch.equal(SPHERE.log(x, x), torch.zeros_like(x))
    assert torch.equal(SPHERE.exp(x, torch.zeros_like(x)), x)


def test_torus_exp_and_log_are_inverse_and_take_the_short_way_round():
    x = torus_points(500)
    u = (torch.rand(500, 2, generator=generator(1), dtype=torch.float64) - 0.5) * 6.2
    assert torch.allclose(TORUS.log(x, TORUS.exp(x, u)), u, atol=1e-12)
    a, b = torch.tensor([[0.1, 3.0]]), torch.tensor([[TWO_PI - 0.1, 3.5]])
    assert torch.allclose(TORUS.log(a, b), torch.tensor([[-0.2, 0.5]]), atol=1e-6)
    assert math.isclose(float(TORUS.dist(a, b)[0]), math.hypot(0.2, 0.5), rel_tol=1e-6)


def test_sphere_tangent_projection_is_orthogonal_and_idempotent():
    x = 2.5 * sphere_points(100)  # off the unit sphere: the tangent space of the sphere through x
    u = torch.randn(100, 3, generator=generator(4), dtype=torch.float64)
    tangent = SPHERE.to_tangent(x, u)
    assert (tangent * x).sum(1).abs().max() < 1e-12
    assert torch.allclose(SPHERE.to_tangent(x, tangent), tangent, atol=1e-12)


def test_uniform_draws_from_gaussians_are_uniform():
    eps = torch.randn(200_000, 2, generator=generator(5), dtype=torch.float64)
    angles = TORUS.from_gaussian(eps)
    assert float(angles.min()) >= 0.0 and float(angles.max()) < TWO_PI
    counts = torch.histc(angles[:, 0], bins=8, min=0.0, max=TWO_PI)
    assert (counts / 25_000 - 1).abs().max() < 0.03  # 8 sigma of a bin count's spread
    points = SPHERE.from_gaussian(torch.randn(200_000, 3, generator=generator(6), dtype=torch.float64))
    # Archimedes: the height of a uniform point on S^2 is uniform on [-1, 1].
    counts = torch.histc(points[:, 2], bins=8, min=-1.0, max=1.0)
    assert (counts / 25_000 - 1).abs().max() < 0.03


def test_log_volumes_are_the_closed_forms():
    assert math.isclose(SPHERE.log_volume(3), math.log(4 * math.pi))  # the area of S^2
    assert math.isclose(SPHERE.log_volume(2), math.log(2 * math.pi))  # the length of S^1
    assert math.isclose(SPHERE.log_volume(4), math.log(2 * math.pi**2))  # |S^3|
    assert math.isclose(TORUS.log_volume(2), 2 * math.log(TWO_PI))


# ---------------------------------------------------------------------------------------------------
# The geodesic path
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifold", ["sphere", "torus"])
def test_geodesic_target_is_the_time_derivative_of_the_path(manifold):
    p = path(manifold)
    dim = 3 if manifold == "sphere" else 2
    z = sphere_points(200, dim) if manifold == "sphere" else torus_points(200, dim)
    noise = torch.randn(200, dim, generator=generator(7), dtype=torch.float64)
    t = torch.rand(200, generator=generator(8), dtype=torch.float64) * 0.98 + 0.01
    x, target = p.sample_with_target(z, t, noise)
    h = 1e-6
    ahead, behind = p.sample(z, t + h, noise), p.sample(z, t - h, noise)
    manifold_ = p.manifold
    step = ahead - behind if manifold == "sphere" else TORUS.log(behind, ahead)  # wrapped on the torus
    finite_difference = step / (2 * h)
    assert torch.allclose(target, finite_difference, atol=1e-6)
    assert torch.allclose(p.target_velocity(x, z, t), target, atol=1e-8)
    # The ends: the prior draw at t = 0, the data at t = 1.
    x0 = manifold_.from_gaussian(noise)
    assert torch.allclose(p.sample(z, torch.zeros(200, dtype=torch.float64), noise), x0, atol=1e-12)
    assert torch.allclose(
        manifold_.log(p.sample(z, torch.ones(200, dtype=torch.float64), noise), z),
        torch.zeros_like(z),
        atol=1e-9,
    )


def test_sphere_path_samples_stay_on_the_sphere_in_float32():
    p = path("sphere")
    z = VMFMixture(VMFMixture.Params()).sample(4096, generator(9))
    x, target = p.sample_with_target(z, torch.rand(4096, generator=generator(10)), generator=generator(11))
    assert (x.norm(dim=1) - 1).abs().max() < 1e-5
    assert (x * target).sum(1).abs().max() < 1e-4  # the target is tangent
    assert (p.sample_prior((4096, 3), generator(12)).norm(dim=1) - 1).abs().max() < 1e-5


def test_prior_log_prob_is_the_uniform_density():
    assert torch.allclose(
        path("sphere").prior_log_prob(sphere_points(4)),
        torch.full((4,), -math.log(4 * math.pi), dtype=torch.float64),
    )
    assert torch.allclose(
        path("torus").prior_log_prob(torus_points(4)),
        torch.full((4,), -2 * math.log(TWO_PI), dtype=torch.float64),
    )


def test_path_refuses_points_that_are_not_vectors():
    with pytest.raises(
        CapabilityError,
        match=r"path 'GeodesicPath' on the sphere needs points of shape \(B, n\), got \(2, 1, 3\)",
    ):
        path("sphere").sample(torch.zeros(2, 1, 3), torch.zeros(2))


# ---------------------------------------------------------------------------------------------------
# Projected solvers
# ---------------------------------------------------------------------------------------------------


def simulate(name, field, x, steps, constraint):
    ts = torch.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
    return SIMULATORS[name]().simulate(Field(field, constraint), x, ts)


@pytest.mark.parametrize("name", list(SIMULATORS))
def test_projected_solvers_keep_samples_on_the_sphere_to_1e_5(name):
    x = path("sphere").sample_prior((2000, 3), generator(13))
    end = simulate(name, swirl, x, 20, path("sphere"))
    assert end.dtype == torch.float32 and (end.norm(dim=1) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("name", list(SIMULATORS))
def test_projected_solvers_keep_angles_on_the_torus(name):
    x = path("torus").sample_prior((2000, 2), generator(14))
    end = simulate(name, lambda x, t: torch.sin(x.flip(1)) + 2.0, x, 20, path("torus"))
    assert float(end.min()) >= 0.0 and float(end.max()) < TWO_PI


@pytest.mark.parametrize(("name", "order"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_projected_solvers_converge_at_their_order(name, order):
    x = sphere_points(64)
    reference = simulate("rk4", swirl, x, 2048, path("sphere"))
    errors = [
        float(SPHERE.dist(simulate(name, swirl, x, n, path("sphere")), reference).max()) for n in (16, 32)
    ]
    measured = math.log2(errors[0] / errors[1])
    assert abs(measured - order) < 0.35, (errors, measured)


def test_projected_solver_takes_the_tangent_part_of_a_field_that_is_not_tangent():
    x = sphere_points(64)
    radial = lambda x, t: swirl(x, t) + 5.0 * x  # noqa: E731 - a radial part the projection removes
    assert torch.allclose(
        simulate("rk4", radial, x, 16, path("sphere")),
        simulate("rk4", swirl, x, 16, path("sphere")),
        atol=1e-12,
    )


def test_a_rotation_is_integrated_exactly_up_to_the_solver_error():
    x = sphere_points(16)
    end = simulate("rk4", rotation, x, 64, path("sphere"))
    axis = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) / math.sqrt(14.0)
    # Rodrigues: the rotation by angle 1 about the unit axis.
    expected = (
        x * math.cos(1.0)
        + torch.linalg.cross(axis.expand_as(x), x) * math.sin(1.0)
        + axis * (x @ axis)[:, None] * (1 - math.cos(1.0))
    )
    assert torch.allclose(end, expected, atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# The tangent network, and the likelihood on the manifold
# ---------------------------------------------------------------------------------------------------


def network(manifold: str, seed: int = 0, harmonics: int = 1) -> TangentMLP:
    torch.manual_seed(seed)
    dim = 3 if manifold == "sphere" else 2
    params = TangentMLP.Params(hidden=[32, 32], harmonics=harmonics, time_features=2)
    return TangentMLP(params, path(manifold).manifold, dim).double().eval()


def test_tangent_network_output_is_tangent_and_torus_network_is_periodic():
    net = network("sphere")
    x = sphere_points(100)
    assert (net(x, torch.rand(100, dtype=torch.float64)) * x).sum(1).abs().max() < 1e-12
    torus_net = network("torus", harmonics=3)
    y, t = torus_points(100), torch.rand(100, dtype=torch.float64)
    assert torch.allclose(
        torus_net(y, t), torus_net(y + TWO_PI * torch.tensor([1.0, -2.0], dtype=torch.float64), t), atol=1e-10
    )


def test_likelihood_ode_projects_the_point_and_leaves_the_integrals():
    from flowkit.engine.likelihood import ChangeOfVariables

    augmented = ChangeOfVariables(Field(rotation, path("sphere")), (3,), 0.0, 1.0)
    y = torch.tensor([[0.0, 0.0, 2.0, 5.0], [3.0, 4.0, 0.0, -1.0]])
    assert augmented.projects
    assert torch.equal(augmented.project(y), torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.6, 0.8, 0.0, -1.0]]))
    assert not ChangeOfVariables(Field(rotation), (3,), 0.0, 1.0).projects


def ambient_divergence(field, x):
    x = x.detach().requires_grad_(True)
    v = field(x)
    return sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1]))


@pytest.mark.parametrize("dim", [3, 4])
def test_ambient_divergence_of_the_projected_field_is_the_riemannian_divergence(dim):
    # grad_S (a.x) = P_x a, and a.x is a spherical harmonic of degree 1: its Laplacian on S^d is
    # -d (a.x). Projecting with x instead of x / |x| would give -(d + 2) (a.x).
    a = torch.arange(1.0, dim + 1, dtype=torch.float64)
    x = sphere_points(50, dim)
    div = ambient_divergence(lambda x: SPHERE.to_tangent(x, a.expand_as(x)), x)
    assert torch.allclose(div, -(dim - 1) * (x @ a), atol=1e-10)


@pytest.mark.parametrize("manifold", ["sphere", "torus"])
def test_uniform_to_uniform_likelihood_is_the_uniform_density(manifold):
    # A rotation of the sphere and a divergence-free periodic flow on the torus carry the uniform
    # measure to itself:
    # the divergence integral is zero and log p is -log vol.
    p = path(manifold)
    field = (
        rotation
        if manifold == "sphere"
        else (lambda x, t: torch.stack([torch.sin(x[:, 1]), torch.cos(x[:, 0])], 1))
    )
    x = sphere_points(64) if manifold == "sphere" else torus_points(64)
    ts = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)
    result = log_likelihood(Field(field, p), ManifoldRK4(), p.prior_log_prob, x, ts)
    assert result.divergence.abs().max() < 1e-10
    assert torch.allclose(result.log_prob, p.prior_log_prob(x), atol=1e-10)


def test_likelihood_of_a_gradient_flow_matches_the_riemannian_change_of_variables():
    # The flow of v = P_x a (a constant) on S^2 moves points along meridians towards a; the
    # density it carries from the uniform one is known through the Jacobian along the meridian:
    # with c = cos(angle to a), dc/dt = |a| (1 - c^2), so the flow in c is c_1 = tanh(artanh(c_0) + |a|),
    # and the area element is dc dphi, so log p_1(x) = -log 4 pi - log(dc_1/dc_0).
    p = path("sphere")
    a = torch.tensor([0.0, 0.0, 0.8], dtype=torch.float64)
    field = lambda x, t: SPHERE.to_tangent(x, a.expand_as(x))  # noqa: E731
    x = sphere_points(64)
    x = x[x[:, 2].abs() < 0.9]
    ts = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    result = log_likelihood(Field(field, p), ManifoldRK4(), p.prior_log_prob, x, ts)
    c1 = x[:, 2]
    c0 = torch.tanh(torch.atanh(c1) - 0.8)
    expected = -math.log(4 * math.pi) - torch.log((1 - c1**2) / (1 - c0**2))
    assert torch.allclose(result.log_prob, expected, atol=1e-7)


def test_tangent_network_needs_the_geodesic_path(flowkit_registry):
    from flowkit.engine import build_pipeline
    from flowkit.testing import make_manager

    spec = {
        "run": {"seed": 0, "device": "cpu"},
        "data": {"kind": "vmf-mixture"},
        "path": {"kind": "gaussian"},
        "model": {"kind": "tangent-mlp", "hidden": [8]},
        "loss": {"kind": "cfm"},
        "train": {"steps": 1, "batch_size": 8},
    }
    expected = (
        r"model 'tangent-mlp' projects onto the tangent space of a manifold, but the pipeline has "
        r"path 'gaussian'; use \[path\] kind = \"geodesic\""
    )
    with pytest.raises(FlowkitError, match=expected):
        build_pipeline(spec, (), make_manager())


def test_geodesic_path_refuses_data_that_are_not_vectors_when_built():
    from flowkit.engine import build_pipeline
    from flowkit.testing import make_manager

    spec = {
        "run": {"seed": 0, "device": "cpu"},
        "data": {"kind": "digits"},
        "path": {"kind": "geodesic"},
        "model": {"kind": "mlp", "hidden": [8]},
        "loss": {"kind": "cfm"},
        "train": {"steps": 1, "batch_size": 8},
    }
    expected = (
        r"path 'geodesic' on the sphere needs vector data of shape \(n,\), but the dataset 'digits' has "
        r"samples of shape \(1, 8, 8\)"
    )
    with pytest.raises(FlowkitError, match=expected):
        build_pipeline(spec, (), make_manager())


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


def test_vmf_density_integrates_to_one():
    data = VMFMixture(VMFMixture.Params(components=3, kappa=15.0))
    nodes, weights = np.polynomial.legendre.leggauss(400)  # in z = cos(polar angle); dA = dz dphi
    phi = torch.arange(800, dtype=torch.float64) * (TWO_PI / 800)
    z = torch.from_numpy(nodes)[:, None].expand(-1, 800)
    r = torch.sqrt(1 - z**2)
    x = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1).reshape(-1, 3)
    density = data.log_prob(x).exp().reshape(400, 800)
    total = float((density.sum(1) * (TWO_PI / 800) * torch.from_numpy(weights)).sum())
    assert abs(total - 1.0) < 1e-9


def test_vmf_density_is_the_closed_form_and_matches_scipy():
    kappa = 7.0
    assert math.isclose(
        vmf_log_normalizer(kappa), math.log(kappa / (4 * math.pi * math.sinh(kappa))), rel_tol=1e-12
    )
    stats = pytest.importorskip("scipy.stats")
    if not hasattr(stats, "vonmises_fisher"):
        pytest.skip("scipy < 1.11 has no vonmises_fisher")
    data = VMFMixture(VMFMixture.Params(components=1, kappa=kappa))
    x = sphere_points(20)
    mu = data.means()[0].numpy()
    expected = stats.vonmises_fisher(mu, kappa).logpdf(x.numpy())
    assert np.allclose(data.log_prob(x).numpy(), expected, atol=1e-10)


def test_vmf_draws_have_the_mean_resultant_of_the_closed_form():
    # E[mu.x] = coth(kappa) - 1 / kappa; Var[mu.x] <= 1/kappa^2 roughly: 5 sigma of 100k draws.
    kappa = 5.0
    mean = torch.tensor([[0.0, 0.6, 0.8]], dtype=torch.float64).expand(100_000, 3)
    x = sample_vmf(mean, kappa, generator(15))
    assert (x.norm(dim=1) - 1).abs().max() < 1e-12
    w = x @ mean[0]
    expected = 1 / math.tanh(kappa) - 1 / kappa
    assert abs(float(w.mean()) - expected) < 5 * float(w.std()) / math.sqrt(100_000)
    # The direction orthogonal to mu is uniform: its mean vanishes.
    across = x - w[:, None] * mean
    assert float(across.mean(0).norm()) < 0.01


def test_vmf_mixture_samples_are_unit_vectors_to_1e_5():
    x = VMFMixture(VMFMixture.Params(kappa=200.0)).sample(10_000, generator(16))
    assert x.dtype == torch.float32 and (x.norm(dim=1) - 1).abs().max() < 1e-5


def test_torus_checkerboard_draws_lie_on_the_dark_cells_with_the_uniform_density_there():
    data = TorusCheckerboard(TorusCheckerboard.Params(cells=4))
    x = data.sample(20_000, generator(17))
    assert float(x.min()) >= 0.0 and float(x.max()) < TWO_PI
    log_p = data.log_prob(x)
    assert torch.allclose(log_p, torch.full_like(log_p, math.log(2 / TWO_PI**2)))
    assert torch.isinf(data.log_prob(torch.tensor([[0.5 * TWO_PI / 4, 1.5 * TWO_PI / 4]]))).all()
    cells = torch.floor(x / (TWO_PI / 4)).long()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).float()
    dark = counts[counts > 0]
    assert dark.numel() == 8 and (dark / 2500 - 1).abs().max() < 0.1


def test_torus_checkerboard_refuses_an_odd_number_of_cells():
    with pytest.raises(ValueError, match="cells must be even so the board wraps without a seam; got 5"):
        TorusCheckerboard.Params(cells=5)


# ---------------------------------------------------------------------------------------------------
# The geodesic W2
# ---------------------------------------------------------------------------------------------------


def test_geodesic_w2_of_single_points_is_their_geodesic_distance():
    metric = GeodesicW2(GeodesicW2.Params(manifold="sphere"))
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[-1.0, 0.0, 1e-4]])
    assert math.isclose(metric(a, b), math.pi - 1e-4, rel_tol=1e-6)
    torus = GeodesicW2(GeodesicW2.Params(manifold="torus"))
    assert math.isclose(
        torus(torch.tensor([[0.1, 3.0]]), torch.tensor([[TWO_PI - 0.1, 3.5]])),
        math.hypot(0.2, 0.5),
        rel_tol=1e-6,
    )


def test_geodesic_w2_of_a_set_and_its_rotation_about_an_axis_is_at_most_the_angle():
    x = sphere_points(300)
    angle = 0.3
    rotate = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0, 0, 1]],
        dtype=torch.float64,
    )
    metric = GeodesicW2(GeodesicW2.Params())
    assert metric(x, x) == 0.0
    distance = metric(x, x @ rotate.T)
    moved = SPHERE.dist(x, x @ rotate.T)
    assert 0 < distance <= float(moved.pow(2).mean().sqrt()) + 1e-12


def test_geodesic_w2_refuses_non_finite_samples():
    metric = GeodesicW2(GeodesicW2.Params())
    with pytest.raises(FlowkitError, match="metric 'geodesic-w2': samples contain 1 NaN or infinite values"):
        metric(torch.tensor([[float("nan"), 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------------
# flow_matching's RiemannianODESolver on the same network (the bench extra; skipped without it)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifold", ["sphere", "torus"])
@pytest.mark.parametrize("method", list(SIMULATORS))
def test_projected_solvers_agree_with_flow_matching_riemannian_solver(manifold, method):
    pytest.importorskip("torchdiffeq")
    solver_module = pytest.importorskip("flow_matching.solver")
    manifolds = pytest.importorskip("flow_matching.utils.manifolds")
    from flow_matching.utils import ModelWrapper

    net = network(manifold, seed=1)

    class Wrapped(ModelWrapper):
        def forward(self, x, t, **extras):
            return self.model(x, t.expand(x.shape[0]))

    reference_manifold = manifolds.Sphere() if manifold == "sphere" else manifolds.FlatTorus()
    solver = solver_module.RiemannianODESolver(reference_manifold, Wrapped(net))
    x = path(manifold).sample_prior((256, 3 if manifold == "sphere" else 2), generator(18)).double()
    grid = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    with torch.no_grad():
        expected = solver.sample(x, step_size=None, method=method, time_grid=grid)
        ours = SIMULATORS[method]().simulate(Field(lambda x, t: net(x, t), path(manifold)), x, grid)
    assert torch.allclose(path(manifold).manifold.log(expected, ours), torch.zeros_like(ours), atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# Quality at reduced size (the examples with shorter training)
# ---------------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, tmp_path, overrides):
    from flowkit.engine import build_pipeline, run_pipeline
    from flowkit.testing import make_manager

    manager = make_manager()
    pipe = build_pipeline(EXAMPLES / f"{name}.toml", [*overrides, "report.plots=false"], manager)
    run = run_pipeline(pipe, manager, out=str(tmp_path / name), quiet=True)
    return run.metrics, np.load(tmp_path / name / "samples.npy")


@pytest.mark.slow
def test_sphere_example_reaches_its_floor_and_the_exact_vmf_likelihood(tmp_path):
    metrics, samples = run_example("sphere-vmf", tmp_path, SPHERE_SHORT)
    assert np.abs(np.linalg.norm(samples, axis=1) - 1).max() <= 1e-5
    assert metrics["nfe"] == 400  # 100 RK4 steps
    assert metrics["distance"] <= 1.3 * metrics["noise_floor"], metrics
    assert abs(metrics["nll_gap"]) <= 0.05, metrics


@pytest.mark.slow
def test_torus_example_reaches_its_floor(tmp_path):
    metrics, samples = run_example("torus-checkerboard", tmp_path, TORUS_SHORT)
    assert samples.min() >= 0.0 and samples.max() < TWO_PI
    assert metrics["nfe"] == 400
    assert metrics["distance"] <= 1.3 * metrics["noise_floor"], metrics
