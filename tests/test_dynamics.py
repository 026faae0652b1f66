"""Dynamics of flowkit_simulators: the extension SDE keeps the marginals, Langevin finds its target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flowkit_simulators.dynamics import ExtensionSDE, FlowODE, LangevinSDE
from flowkit_simulators.simulators import EulerMaruyamaSimulator, HeunSimulator
from flowkit_simulators.timegrids import UniformGrid
from scipy import stats

from flowkit.errors import CapabilityError
from flowkit.interfaces import BuildContext

# --- Gaussian data N(m, s^2 I) on the OT path: p_t = N(t m, (t^2 s^2 + (1 - t)^2) I) -------------------

DATA_MEAN = torch.tensor([2.0, -1.0], dtype=torch.float64)
DATA_STD = 1.5


def marginal_variance(t):
    return t**2 * DATA_STD**2 + (1 - t) ** 2


def exact_velocity(x, t):
    """``u_t(x) = m + v'_t / (2 v_t) (x - t m)``: the linear map that carries N(0, I) along p_t."""
    t = t[:, None]
    d_variance = 2 * t * DATA_STD**2 - 2 * (1 - t)
    return DATA_MEAN + d_variance / (2 * marginal_variance(t)) * (x - t * DATA_MEAN)


def exact_score(x, t):
    """``grad log p_t(x) = -(x - t m) / v_t``."""
    t = t[:, None]
    return -(x - t * DATA_MEAN) / marginal_variance(t)


@pytest.mark.parametrize(
    ("sigma", "schedule"), [(0.5, "constant"), (1.0, "constant"), (3.0, "constant"), (3.0, "linear-decay")]
)
def test_extension_sde_keeps_the_marginals_of_the_path(sigma, schedule):
    n, steps = 10_000, 400
    sde = ExtensionSDE(
        ExtensionSDE.Params(sigma=sigma, sigma_schedule=schedule), velocity=exact_velocity, score=exact_score
    )
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 2, generator=generator, dtype=torch.float64)  # p_0 = N(0, I)
    x1 = EulerMaruyamaSimulator().simulate(sde, x0, UniformGrid()(steps, 0.0, 1.0), generator)

    # Euler–Maruyama keeps the mean exactly here and biases the std by < 0.005 at 400 steps (computed
    # from the discrete variance recursion), below one standard error (0.0106 per coordinate).
    se_mean = DATA_STD / math.sqrt(n)
    se_std = DATA_STD / math.sqrt(2 * (n - 1))
    assert (x1.mean(dim=0) - DATA_MEAN).abs().max().item() < 4 * se_mean
    assert (x1.std(dim=0) - DATA_STD).abs().max().item() < 4 * se_std
    # The noise is really there: the SDE does not follow the deterministic flow.
    flow = EulerMaruyamaSimulator().simulate(FlowODE(velocity=exact_velocity), x0, UniformGrid()(steps))
    assert (x1 - flow).std().item() > 0.1


def test_extension_sde_diffusion_schedules_and_zero_sigma():
    t = torch.tensor([0.0, 0.25, 1.0])
    constant = ExtensionSDE(ExtensionSDE.Params(sigma=2.0))
    decaying = ExtensionSDE(ExtensionSDE.Params(sigma=2.0, sigma_schedule="linear-decay"))
    assert torch.equal(constant.diffusion(t), torch.full((3,), 2.0))
    assert torch.equal(decaying.diffusion(t), torch.tensor([2.0, 1.5, 0.0]))

    def no_score(x, t):
        raise AssertionError("sigma = 0 must not evaluate the score")

    flow = ExtensionSDE(ExtensionSDE.Params(sigma=0.0), velocity=exact_velocity, score=no_score)
    x, tb = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    assert torch.equal(flow.drift(x, tb), exact_velocity(x, tb))
    drift = ExtensionSDE(ExtensionSDE.Params(sigma=2.0), velocity=exact_velocity, score=exact_score)
    assert torch.allclose(drift.drift(x, tb), exact_velocity(x, tb) + 2.0 * exact_score(x, tb))


def test_extension_sde_params_are_validated():
    with pytest.raises(ValueError, match="sigma"):
        ExtensionSDE.Params(sigma=-1.0)
    with pytest.raises(ValueError, match="sigma_schedule"):
        ExtensionSDE.Params(sigma_schedule="cosine")


# --- Langevin dynamics towards a 1D Gaussian mixture ------------------------------------------------

WEIGHTS = torch.tensor([0.4, 0.6], dtype=torch.float64)
MEANS = torch.tensor([-1.0, 1.0], dtype=torch.float64)
STDS = torch.tensor([0.6, 0.8], dtype=torch.float64)


def mixture_score(x, t):
    """Closed-form ``d/dx log sum_k w_k N(x; m_k, s_k^2)`` for ``x (B, 1)``: posterior-weighted scores."""
    offset = x[..., None] - MEANS
    log_joint = torch.log(WEIGHTS) - 0.5 * (offset / STDS) ** 2 - torch.log(STDS)
    return (torch.softmax(log_joint, dim=-1) * (-offset / STDS**2)).sum(dim=-1)


def mixture_quantiles(levels: np.ndarray) -> np.ndarray:
    grid = np.linspace(-8.0, 8.0, 200_001)
    cdf = sum(
        w * stats.norm.cdf(grid, m, s)
        for w, m, s in zip(WEIGHTS.tolist(), MEANS.tolist(), STDS.tolist(), strict=True)
    )
    return np.interp(levels, cdf, grid)


def w2_to_mixture(samples: torch.Tensor) -> float:
    """1D 2-Wasserstein distance between samples and the mixture (sorted samples vs quantiles)."""
    sorted_samples = np.sort(samples.numpy())
    levels = (np.arange(sorted_samples.size) + 0.5) / sorted_samples.size
    return float(np.sqrt(np.mean((sorted_samples - mixture_quantiles(levels)) ** 2)))


@pytest.mark.slow
def test_langevin_with_exact_score_converges_to_the_mixture_from_a_wrong_start():
    n, duration, steps = 10_000, 12.0, 1200
    start = torch.full((n, 1), -4.0, dtype=torch.float64)  # beyond the minor mode, far from the target
    # sigma = sqrt(2): the standard Langevin diffusion dX = score dt + sqrt(2) dW, run for `duration`.
    langevin = LangevinSDE(LangevinSDE.Params(sigma=math.sqrt(2.0)), score=mixture_score)
    generator = torch.Generator().manual_seed(0)
    samples = (
        EulerMaruyamaSimulator()
        .simulate(langevin, start, UniformGrid()(steps, 0.0, duration), generator)
        .flatten()
    )

    mean = (WEIGHTS * MEANS).sum().item()
    var = (WEIGHTS * (STDS**2 + MEANS**2)).sum().item() - mean**2
    assert abs(samples.mean().item() - mean) < 4 * math.sqrt(var / n)
    # Tolerance: 4 standard errors plus the O(h) bias of unadjusted Langevin (about h / (4 s^2) in var).
    assert abs(samples.var().item() - var) < 4 * var * math.sqrt(2 / n) + var * 0.01 / (4 * 0.6**2)

    exact = torch.randn(n, generator=generator, dtype=torch.float64)
    component = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    exact = MEANS[component] + STDS[component] * exact
    assert w2_to_mixture(start.flatten()) > 4.0
    # As close to the mixture as a fresh exact sample of the same size (up to a small margin).
    assert w2_to_mixture(samples) < 1.5 * w2_to_mixture(exact) + 0.01


def test_langevin_evaluates_the_score_at_the_fixed_time_clamped_into_the_path():
    seen = []

    def recording_score(x, t):
        seen.append(t.clone())
        return -x

    class Path:
        t_range = (0.0, 0.99)
        converts_roles = False
        registered_name = "stub"

    context = BuildContext(path=Path(), roles={"score": recording_score})
    langevin = LangevinSDE.from_params(LangevinSDE.Params(sigma=2.0, t_fixed=1.0), context)
    assert langevin.score_time == 0.99
    x = torch.ones(3, 2)
    drift = langevin.drift(x, torch.full((3,), 0.1))
    assert torch.equal(drift, -2.0 * x)  # sigma^2 / 2 * score
    assert torch.equal(seen[0], torch.full((3,), 0.99))
    assert torch.equal(langevin.diffusion(torch.zeros(3)), torch.full((3,), 2.0))
    without_path = LangevinSDE.from_params(LangevinSDE.Params(t_fixed=0.5), BuildContext(roles=context.roles))
    assert without_path.score_time == 0.5


# --- building from a context ---------------------------------------------------------------------------


def test_dynamics_take_their_fields_from_the_context_roles():
    context = BuildContext(roles={"velocity": exact_velocity, "score": exact_score})
    flow = FlowODE.from_params(FlowODE.Params(), context)
    sde = ExtensionSDE.from_params(ExtensionSDE.Params(sigma=1.0), context)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)
    assert torch.equal(flow.drift(x, t), exact_velocity(x, t))
    assert torch.allclose(sde.drift(x, t), exact_velocity(x, t) + 0.5 * exact_score(x, t))
    assert FlowODE.needs == {"velocity"} and ExtensionSDE.needs == {"velocity", "score"}
    assert LangevinSDE.needs == {"score"}


def test_missing_role_is_a_capability_error_naming_the_dynamics():
    with pytest.raises(CapabilityError) as error:
        ExtensionSDE.from_params(ExtensionSDE.Params(), BuildContext(roles={"velocity": exact_velocity}))
    assert str(error.value).startswith(
        "dynamics 'extension-sde' needs a score, but the model provides velocity"
    )


def test_dynamics_built_without_a_field_say_how_to_give_one():
    with pytest.raises(CapabilityError) as error:
        FlowODE().drift(torch.zeros(1, 1), torch.zeros(1))
    assert str(error.value) == (
        "dynamics 'flow' was built without a velocity; build it through a pipeline (the model provides "
        "the velocity) or pass it directly, e.g. velocity=my_module"
    )


def test_flow_ode_with_exact_velocity_carries_the_prior_to_the_data():
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 2, generator=generator, dtype=torch.float64)
    x1 = HeunSimulator().simulate(FlowODE(velocity=exact_velocity), x0, UniformGrid()(200))
    # The exact flow of this linear path is the affine map x0 -> m + s x0.
    assert torch.allclose(x1, DATA_MEAN + DATA_STD * x0, atol=5e-5)  # Heun error ~1.3e-5
