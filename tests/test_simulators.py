"""Simulators and time grids of flowkit_simulators: convergence orders, SDE statistics, contracts."""

from __future__ import annotations

import inspect
import math

import attrs
import numpy as np
import pytest
import torch
from flowkit_simulators.dynamics import ExtensionSDE, FlowODE
from flowkit_simulators.simulators import (
    EulerMaruyamaSimulator,
    EulerSimulator,
    HeunSimulator,
    MidpointSimulator,
    RK4Simulator,
)
from flowkit_simulators.timegrids import PowerGrid, UniformGrid
from scipy import stats

from flowkit.errors import CapabilityError, ConfigError
from flowkit.interfaces import KINDS, ODE, SDE
from flowkit.params import field_doc
from flowkit.solvers import counted
from flowkit.testing import build_component, make_manager

THETA = 1.3
STEP_COUNTS = [16, 32, 64, 128, 256]


class OrnsteinUhlenbeck(SDE):
    """``dX = -theta X dt + sigma dW``."""

    def __init__(self, theta: float, sigma: float) -> None:
        super().__init__()
        self.theta, self.sigma = theta, sigma

    def drift(self, x, t):
        return -self.theta * x

    def diffusion(self, t):
        return t.new_full(t.shape, self.sigma)


def decay(x, t):
    """``u_t(x) = -theta x``: ``x_1 = exp(-theta) x_0``."""
    return -THETA * x


def growth(x, t):
    """``u_t(x) = 2 t x``: ``x_1 = e x_0``; depends on t, so a wrong stage time breaks the order."""
    return 2.0 * t[:, None] * x


def fitted_order(simulator, field, exact_factor, grid) -> float:
    x0 = torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    errors = []
    for steps in STEP_COUNTS:
        x1 = simulator.simulate(FlowODE(velocity=field), x0, grid(steps, 0.0, 1.0))
        errors.append((x1 - exact_factor * x0).abs().max().item())
    slope, _ = np.polyfit(np.log(1.0 / np.array(STEP_COUNTS)), np.log(errors), 1)
    return float(slope)


@pytest.mark.parametrize(
    "grid", [UniformGrid(), PowerGrid(PowerGrid.Params(rho=2.0))], ids=["uniform", "power"]
)
@pytest.mark.parametrize(
    ("field", "exact_factor"), [(decay, math.exp(-THETA)), (growth, math.e)], ids=["decay", "growth"]
)
@pytest.mark.parametrize(
    ("simulator", "order"),
    [(EulerSimulator(), 1.0), (HeunSimulator(), 2.0), (MidpointSimulator(), 2.0), (RK4Simulator(), 4.0)],
    ids=["euler", "heun", "midpoint", "rk4"],
)
def test_convergence_order(simulator, order, field, exact_factor, grid):
    slope = fitted_order(simulator, field, exact_factor, grid)
    assert abs(slope - order) < 0.15, f"fitted order {slope:.3f}, expected {order}"


@pytest.mark.parametrize(
    ("simulator", "evals"), [(MidpointSimulator(), 2), (RK4Simulator(), 4)], ids=["midpoint", "rk4"]
)
def test_midpoint_and_rk4_count_evaluations_and_leave_the_input_alone(simulator, evals):
    x0 = torch.tensor([[1.0], [-0.5]], dtype=torch.float64)
    before = x0.clone()
    # A field that returns its input's storage: a step that wrote into a stage would corrupt it.
    x1 = simulator.simulate(FlowODE(velocity=lambda x, t: x), x0, UniformGrid()(10, 0.0, 1.0))
    assert simulator.last_nfe == evals * 10
    assert torch.equal(x0, before)
    # one step of each method on u = x has the Taylor polynomial of e^h of its order
    h = 0.1
    taylor = sum(h**k / math.factorial(k) for k in range(evals + 1)) ** 10
    torch.testing.assert_close(x1, taylor * before, rtol=1e-12, atol=0)


def test_euler_maruyama_reproduces_ornstein_uhlenbeck_moments():
    theta, sigma, x0_value, steps = 1.5, 0.8, 2.0, 1000
    n = 20_000
    x0 = torch.full((n, 2), x0_value)
    generator = torch.Generator().manual_seed(0)
    ts = UniformGrid()(steps, 0.0, 1.0)
    x1 = EulerMaruyamaSimulator().simulate(OrnsteinUhlenbeck(theta, sigma), x0, ts, generator).double()
    samples = x1.flatten()  # coordinates are independent copies

    mean = math.exp(-theta) * x0_value
    var = sigma**2 * (1 - math.exp(-2 * theta)) / (2 * theta)
    # Euler–Maruyama's own moments on this grid differ by O(h); make sure that is below the MC noise.
    h = 1.0 / steps
    em_mean = (1 - theta * h) ** steps * x0_value
    em_var = sigma**2 * h * (1 - (1 - theta * h) ** (2 * steps)) / (1 - (1 - theta * h) ** 2)
    se_mean = math.sqrt(var / samples.numel())
    se_var = var * math.sqrt(2.0 / (samples.numel() - 1))
    assert abs(em_mean - mean) < 0.25 * se_mean and abs(em_var - var) < 0.25 * se_var

    assert abs(samples.mean().item() - mean) < 4 * se_mean
    assert abs(samples.var().item() - var) < 4 * se_var


def test_noise_increments_are_gaussian_with_variance_h():
    brownian = OrnsteinUhlenbeck(theta=0.0, sigma=1.0)  # zero drift, unit noise: X is a Brownian motion
    n = 50_000
    ts = PowerGrid()(8, 0.0, 1.0)  # unequal steps, so the variance must follow each h
    h = torch.diff(ts)
    x0 = torch.zeros(n, 1, dtype=torch.float64)

    def increments(seed):
        generator = torch.Generator().manual_seed(seed)
        trajectory = EulerMaruyamaSimulator().simulate_trajectory(brownian, x0, ts, generator)
        return torch.diff(trajectory[:, :, 0], dim=0)  # (T, B)

    dw = increments(1)
    ratio = dw.var(dim=1) / h
    assert (ratio - 1).abs().max().item() < 4 * math.sqrt(2.0 / (n - 1))
    assert (dw.mean(dim=1).abs() / h.sqrt()).max().item() < 4 / math.sqrt(n)

    standardized = (dw / h.sqrt()[:, None]).flatten().numpy()
    assert stats.kstest(standardized, "norm").pvalue > 0.01
    assert abs(stats.skew(standardized)) < 4 * math.sqrt(6 / standardized.size)
    assert abs(stats.kurtosis(standardized)) < 4 * math.sqrt(24 / standardized.size)
    # Independent increments: consecutive steps are uncorrelated.
    correlation = np.corrcoef(
        standardized.reshape(len(h), n)[:-1].ravel(), standardized.reshape(len(h), n)[1:].ravel()
    )[0, 1]
    assert abs(correlation) < 4 / math.sqrt(n * (len(h) - 1))

    assert torch.equal(dw, increments(1))
    assert not torch.allclose(dw, increments(2))


@pytest.mark.parametrize(
    ("simulator", "evals_per_step"),
    [(EulerSimulator(), 1), (HeunSimulator(), 2), (EulerMaruyamaSimulator(), 1)],
    ids=["euler", "heun", "euler-maruyama"],
)
def test_trajectory_shape_last_state_and_nfe(simulator, evals_per_step):
    steps, batch, event = 7, 5, (2, 3)
    x0 = torch.randn(batch, *event, generator=torch.Generator().manual_seed(3))
    x0_copy = x0.clone()
    if isinstance(simulator, EulerMaruyamaSimulator):
        dynamics = ExtensionSDE(velocity=lambda x, t: -x, score=lambda x, t: -x)
    else:
        dynamics = FlowODE(velocity=lambda x, t: -x)
    ts = PowerGrid()(steps, 0.0, 1.0)

    trajectory = simulator.simulate_trajectory(dynamics, x0, ts, torch.Generator().manual_seed(9))
    assert simulator.last_nfe == evals_per_step * steps
    final = simulator.simulate(dynamics, x0, ts, torch.Generator().manual_seed(9))
    assert simulator.last_nfe == evals_per_step * steps

    assert trajectory.shape == (steps + 1, batch, *event)
    assert torch.equal(trajectory[0], x0)
    assert torch.equal(trajectory[-1], final)
    assert torch.equal(x0, x0_copy)


@pytest.mark.parametrize(
    "simulator",
    [EulerSimulator(), HeunSimulator(), EulerMaruyamaSimulator()],
    ids=["euler", "heun", "euler-maruyama"],
)
def test_step_never_writes_into_its_input(simulator):
    # The identity field returns x itself, so a step that wrote into a drift would corrupt x.
    identity = FlowODE(velocity=lambda x, t: x)
    x = torch.ones(4, 2)
    t, h = torch.zeros(4), torch.full((4,), 0.5)
    out = simulator.step(identity, x, t, h)
    assert torch.equal(x, torch.ones(4, 2))
    expected = 1.5 if not isinstance(simulator, HeunSimulator) else 1 + 0.25 * (1 + 1.5)
    assert torch.allclose(out, torch.full((4, 2), expected))


@pytest.mark.parametrize("simulator_cls", [HeunSimulator, EulerSimulator], ids=["heun", "euler"])
def test_ode_simulator_refuses_an_sde(simulator_cls):
    simulator = simulator_cls()
    simulator.registered_name = "heun" if simulator_cls is HeunSimulator else "euler"
    sde = ExtensionSDE(velocity=lambda x, t: x, score=lambda x, t: x)
    sde.registered_name = "extension-sde"
    with pytest.raises(CapabilityError) as error:
        simulator.simulate(sde, torch.zeros(2, 1), UniformGrid()(4))
    assert str(error.value) == (
        f"simulator '{simulator.registered_name}' integrates an ODE, but dynamics 'extension-sde' is an "
        'SDE; choose a simulator for an SDE (e.g. "euler-maruyama") or ODE dynamics ("flow")'
    )


def test_simulator_refuses_something_that_is_not_dynamics():
    simulator = EulerMaruyamaSimulator()
    simulator.registered_name = "euler-maruyama"
    with pytest.raises(
        CapabilityError,
        match=r"simulator 'euler-maruyama' integrates flowkit dynamics .* "
        r"got a function",
    ):
        simulator.simulate(decay, torch.zeros(2, 1), UniformGrid()(4))


def test_euler_maruyama_on_an_ode_is_euler_and_draws_no_noise():
    ode = FlowODE(velocity=growth)
    x0 = torch.randn(6, 1, generator=torch.Generator().manual_seed(0))
    ts = PowerGrid()(9)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    em = EulerMaruyamaSimulator().simulate(ode, x0, ts, generator)
    assert torch.equal(em, EulerSimulator().simulate(ode, x0, ts))
    assert torch.equal(generator.get_state(), state)


# --- time grids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid",
    [UniformGrid(), PowerGrid(), PowerGrid(PowerGrid.Params(rho=0.5))],
    ids=["uniform", "power", "power-rho-0.5"],
)
@pytest.mark.parametrize("steps", [1, 2, 37])
def test_grid_shape_endpoints_and_monotonicity(grid, steps):
    ts = grid(steps, 0.1, 0.99999)
    assert ts.shape == (steps + 1,) and ts.dtype == torch.float64
    assert ts[0].item() == 0.1 and ts[-1].item() == 0.99999
    assert (torch.diff(ts) > 0).all()


def test_uniform_grid_has_equal_steps_and_power_grid_shrinks_them_towards_the_data_end():
    uniform = UniformGrid()(10, 0.0, 1.0)
    assert torch.allclose(torch.diff(uniform), torch.full((10,), 0.1, dtype=torch.float64))
    power = torch.diff(PowerGrid(PowerGrid.Params(rho=3.0))(10, 0.0, 1.0))
    assert (torch.diff(power) < 0).all()  # strictly shrinking steps
    assert power[-1].item() == pytest.approx(1e-3)  # (1/N)^rho of the interval
    assert torch.allclose(PowerGrid(PowerGrid.Params(rho=1.0))(10, 0.0, 1.0), uniform)


@pytest.mark.parametrize(("grid", "name"), [(UniformGrid(), "uniform"), (PowerGrid(), "power")])
def test_grid_rejects_bad_arguments(grid, name):
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ConfigError) as error:
            grid(steps, 0.0, 1.0)
        assert str(error.value) == (
            f"time grid '{name}' needs an integer number of steps >= 1, got {steps!r}"
        )
    with pytest.raises(ConfigError) as error:
        grid(4, 1.0, 0.0)
    assert str(error.value) == (
        f"time grid '{name}' needs finite times with t_start < t_end, got t_start = 1.0, t_end = 0.0"
    )


def test_power_grid_validates_rho():
    with pytest.raises(ValueError, match="rho"):
        PowerGrid.Params(rho=0.0)


# --- registration ----------------------------------------------------------------------------------


def test_plugin_registers_every_component_with_its_kind():
    import flowkit_simulators

    added = {}

    class Recorder:
        def add(self, kind, name, cls):
            added[(kind, name)] = cls

    flowkit_simulators.flowkit_register(Recorder())
    assert set(added) == {
        ("simulator", "euler"),
        ("simulator", "heun"),
        ("simulator", "midpoint"),
        ("simulator", "rk4"),
        ("simulator", "euler-maruyama"),
        ("simulator", "dopri5"),
        ("simulator", "dpm-solver++"),
        ("simulator", "edm"),
        ("dynamics", "flow"),
        ("dynamics", "extension-sde"),
        ("dynamics", "langevin"),
        ("timegrid", "uniform"),
        ("timegrid", "power"),
        ("timegrid", "karras"),
        ("timegrid", "shift"),
    }
    for (kind, _), cls in added.items():
        assert issubclass(cls, KINDS[kind]) and not inspect.isabstract(cls)
        for field in attrs.fields(cls.Params):
            assert field_doc(field), f"{cls.__name__}.Params.{field.name} has no doc"


# ---------------------------------------------------------------------------------------------------
# FixedStepSimulator: the counting wrapper keeps the dynamics' type
# ---------------------------------------------------------------------------------------------------


class Decay(ODE):
    """``dX = -X dt``."""

    def drift(self, x, t):
        return -x


class NoisyDecay(SDE):
    """``dX = -X dt + 0.5 dW``."""

    def drift(self, x, t):
        return -x

    def diffusion(self, t):
        return torch.full_like(t, 0.5)


def test_counted_keeps_an_sde_an_sde():
    sde, ode = NoisyDecay(), Decay()
    assert isinstance(counted(sde), SDE)
    assert not isinstance(counted(ode), SDE) and isinstance(counted(ode), ODE)
    wrapped = counted(sde)
    t = torch.rand(4)
    assert torch.equal(wrapped.diffusion(t), sde.diffusion(t))
    wrapped.drift(torch.ones(4, 2), t)
    assert wrapped.count == 1


def test_euler_maruyama_draws_noise_through_simulate():
    manager = make_manager(builtins=["simulators"])
    em = build_component(manager, "simulator", "euler-maruyama")
    euler = build_component(manager, "simulator", "euler")
    heun = build_component(manager, "simulator", "heun")
    x0 = torch.ones(64, 2)
    ts = torch.linspace(0, 1, 11)
    deterministic = euler.simulate(Decay(), x0, ts)
    assert euler.last_nfe == 10
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    noisy = em.simulate(NoisyDecay(), x0, ts, generator=generator)
    assert em.last_nfe == 10
    assert not torch.equal(generator.get_state(), state)  # the noise came from the generator
    assert (noisy - deterministic).abs().mean() > 0.05
    again = em.simulate(NoisyDecay(), x0, ts, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert torch.equal(em.simulate(Decay(), x0, ts), deterministic)  # an ODE: exactly Euler's, no noise
    trajectory = em.simulate_trajectory(NoisyDecay(), x0, ts, generator=torch.Generator().manual_seed(0))
    assert trajectory.shape == (11, 64, 2) and torch.equal(trajectory[-1], noisy)
    heun.simulate(Decay(), x0, ts)
    assert heun.last_nfe == 20
