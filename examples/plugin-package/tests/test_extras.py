"""Tests of flowkit-extras, written with flowkit's testing aid (the ``flowkit_manager`` fixture and
:mod:`flowkit.testing` helpers, available wherever flowkit is installed)."""

from __future__ import annotations

import math

import flowkit_extras
import numpy as np
import pytest
import torch
from flowkit_extras.schedules import PolynomialSchedule
from flowkit_extras.simulators import RalstonSimulator, RK38Simulator

from flowkit.errors import CapabilityError, ConfigError
from flowkit.interfaces import ODE, SDE
from flowkit.testing import build_component, check_component


class Logistic(ODE):
    """``dx/dt = cos(t) x (1 - x)``: nonlinear and time-dependent, with a closed-form solution."""

    def drift(self, x, t):
        return torch.cos(t)[:, None] * x * (1 - x)

    @staticmethod
    def exact(x0, t):
        return 1.0 / (1.0 + (1.0 / x0 - 1.0) * math.exp(-math.sin(t)))


class Noisy(SDE):
    def drift(self, x, t):
        return -x

    def diffusion(self, t):
        return torch.ones_like(t)


def test_components_register_cleanly(flowkit_manager):
    manager = flowkit_manager(plugins=[("extras", flowkit_extras)])
    assert manager.problems == []
    provided = {(e.kind, e.name) for e in manager.components_of("extras")}
    assert provided == {("simulator", "ralston"), ("simulator", "rk38"), ("schedule", "polynomial")}
    check_component("simulator", RalstonSimulator)
    check_component("simulator", RK38Simulator)
    check_component("schedule", PolynomialSchedule)


@pytest.mark.parametrize(("name", "order", "evals"), [("ralston", 2, 2), ("rk38", 4, 4)])
def test_convergence_order_by_fitted_slope(flowkit_manager, name, order, evals):
    manager = flowkit_manager(plugins=[("extras", flowkit_extras)], builtins=False)
    simulator = build_component(manager, "simulator", name)
    x0 = torch.tensor([[0.1], [0.5], [0.9]], dtype=torch.float64)
    exact = torch.tensor([[Logistic.exact(v, 1.0)] for v in (0.1, 0.5, 0.9)], dtype=torch.float64)
    steps = [8, 16, 32, 64, 128]
    errors = []
    for n in steps:
        ts = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
        x1 = simulator.simulate(Logistic(), x0, ts)
        assert simulator.last_nfe == evals * n
        errors.append(float((x1 - exact).abs().max()))
    slope = np.polyfit(np.log([1 / n for n in steps]), np.log(errors), 1)[0]
    assert slope == pytest.approx(order, abs=0.15), (name, slope, errors)


def test_ode_simulators_refuse_an_sde(flowkit_manager):
    manager = flowkit_manager(plugins=[("extras", flowkit_extras)], builtins=False)
    rk38 = build_component(manager, "simulator", "rk38")
    noisy = Noisy()
    noisy.registered_name = "noisy"
    with pytest.raises(
        CapabilityError, match="simulator 'rk38' integrates an ODE, but dynamics 'noisy' is an SDE"
    ):
        rk38.simulate(noisy, torch.zeros(2, 1), torch.linspace(0, 1, 3))


def test_polynomial_schedule_derivatives_and_ends(flowkit_manager):
    manager = flowkit_manager(plugins=[("extras", flowkit_extras)], builtins=False)
    schedule = build_component(manager, "schedule", {"kind": "polynomial", "power": 3.0})
    t = torch.linspace(0.0, 0.99, 50, dtype=torch.float64, requires_grad=True)
    for value, derivative in ((schedule.alpha, schedule.d_alpha), (schedule.beta, schedule.d_beta)):
        (autograd,) = torch.autograd.grad(value(t).sum(), t)
        torch.testing.assert_close(derivative(t.detach()), autograd)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(schedule.alpha(ends), torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(schedule.beta(ends), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # power = 1 is the OT schedule alpha = t, beta = 1 - t.
    linear = PolynomialSchedule(PolynomialSchedule.Params(power=1.0))
    torch.testing.assert_close(linear.alpha(t.detach()), t.detach())
    torch.testing.assert_close(linear.beta(t.detach()), 1 - t.detach())


def test_invalid_power_names_the_key(flowkit_manager):
    manager = flowkit_manager(plugins=[("extras", flowkit_extras)], builtins=False)
    with pytest.raises(ConfigError, match=r"key 'power': invalid value 0\.5"):
        build_component(manager, "schedule", {"kind": "polynomial", "power": 0.5})
