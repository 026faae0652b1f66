"""Dynamics that offer more than a drift, dynamics refusing a simulator, and paths that project their
samples: each through a small third-party-style plugin registered with ``registry.add``."""

from __future__ import annotations

import pytest
import torch
from flowkit_gaussian.path import GaussianPath
from torch import Tensor

from flowkit import hookimpl
from flowkit.engine.build import build_pipeline
from flowkit.errors import CapabilityError
from flowkit.interfaces import ODE, Simulator, per_sample
from flowkit.solvers import FixedStepSimulator
from flowkit.testing import build_component


class AveragingODE(ODE):
    """``dx/dt = -x`` that also offers its average velocity over ``[t, t + h]`` (as MeanFlow's does)."""

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return -x

    def average(self, x: Tensor, t: Tensor, h: Tensor) -> Tensor:
        # the exact flow over h: x e^{-h} = x + h * average
        h_b = per_sample(h, x)
        return x * torch.expm1(-h_b) / h_b


class OneJump(FixedStepSimulator):
    """A one-step-per-interval simulator using the dynamics' average velocity."""

    def step(self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator=None) -> Tensor:
        return x + per_sample(h, x) * dynamics.average(x, t, h)  # type: ignore[attr-defined]


class MaskedCTMC(ODE):
    """A jump process: no drift, and no ODE simulator can integrate it."""

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        raise AssertionError("a jump process has no drift")

    def check_simulator(self, simulator: Simulator) -> None:
        raise CapabilityError(
            f"dynamics '{self.registered_name}' is a jump process, but simulator "
            f"'{simulator.registered_name}' integrates an ODE; use a jump simulator"
        )


class SpherePath(GaussianPath):
    """The OT path with every state projected onto the unit sphere."""

    projects = True

    def project(self, x: Tensor) -> Tensor:
        return x / x.norm(dim=1, keepdim=True)


class ContractPlugin:
    @staticmethod
    @hookimpl
    def flowkit_register(registry):
        registry.add("dynamics", "averaging", AveragingODE)
        registry.add("dynamics", "masked-ctmc", MaskedCTMC)
        registry.add("simulator", "one-jump", OneJump)
        registry.add("path", "sphere-ot", SpherePath)


@pytest.fixture
def manager(flowkit_manager):
    manager = flowkit_manager(plugins=[("contract-test", ContractPlugin)])
    assert manager.problems == []
    return manager


def test_the_counting_wrapper_forwards_what_the_dynamics_offer(manager):
    simulator = build_component(manager, "simulator", "one-jump")
    x0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    ts = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    x1 = simulator.simulate(AveragingODE(), x0, ts)
    torch.testing.assert_close(x1, x0 * torch.exp(torch.tensor(-1.0, dtype=torch.float64)))
    assert simulator.last_nfe == 0  # the drift was never called; the average is not declared


class CountedAveragingODE(AveragingODE):
    """The same dynamics, declaring that each ``average`` call evaluates the network once."""

    evaluations = frozenset({"average"})


def test_the_counting_wrapper_counts_the_evaluations_the_dynamics_declare(manager):
    simulator = build_component(manager, "simulator", "one-jump")
    x0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    ts = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    x1 = simulator.simulate(CountedAveragingODE(), x0, ts)
    torch.testing.assert_close(x1, x0 * torch.exp(torch.tensor(-1.0, dtype=torch.float64)))
    assert simulator.last_nfe == 4  # one average per interval


def pipeline(**sample):
    return {
        "data": "moons",
        "path": {"kind": "gaussian"},
        "model": {"kind": "mlp", "hidden": [8]},
        "loss": "cfm",
        "sample": {"steps": 4, "n": 16, **sample},
        "evaluate": {"n": 16},
    }


def test_dynamics_refuse_a_simulator_at_build_time(manager):
    with pytest.raises(CapabilityError) as refused:
        build_pipeline(pipeline(dynamics="masked-ctmc", simulator="heun"), manager=manager)
    message = str(refused.value)
    assert message == (
        "<dict>: [sample]: dynamics 'masked-ctmc' is a jump process, but simulator 'heun' integrates "
        "an ODE; use a jump simulator"
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("simulator", "dynamics"),
    [
        ("euler", "flow"),
        ("heun", "flow"),
        ("midpoint", "flow"),
        ("rk4", "flow"),
        ("dopri5", "flow"),
        ("dpm-solver++", "flow"),
        ("edm", "flow"),
        ("euler-maruyama", "extension-sde"),
    ],
)
def test_every_simulator_applies_the_paths_projection(manager, simulator, dynamics):
    spec = pipeline(simulator=simulator, dynamics=dynamics)
    spec["path"] = {"kind": "sphere-ot"}
    built = build_pipeline(spec, manager=manager)
    x0 = built.path.sample_prior((64, 2), generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(*built.path.t_range, 5)
    sim = built.sample.simulator
    with torch.no_grad():
        final = sim.simulate(built.sample.dynamics, x0, ts, generator=torch.Generator().manual_seed(1))
        path = sim.simulate_trajectory(built.sample.dynamics, x0, ts, generator=torch.Generator())
    torch.testing.assert_close(final.norm(dim=1), torch.ones(64), rtol=0, atol=1e-6)
    torch.testing.assert_close(path[-1].norm(dim=1), torch.ones(64), rtol=0, atol=1e-6)


def test_a_path_that_does_not_project_leaves_the_samples_alone(manager):
    built = build_pipeline(pipeline(simulator="heun"), manager=manager)
    assert not built.sample.dynamics.projects
    x = torch.randn(3, 2)
    assert built.sample.dynamics.project(x) is x
