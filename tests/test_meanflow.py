"""MeanFlow (plugins/flowkit_flowmaps, docs/math.md "MeanFlow"): the JVP target against finite
differences, the closed-form average velocity of a linear flow as the loss's only zero (and learned),
r = t as flow matching, the adaptive weight, the time draws, the jump sampler, and the build-time
refusals."""

from __future__ import annotations

import pytest
import torch
from flowkit_flowmaps.jumps import MeanFlowDynamics, MeanFlowJump
from flowkit_flowmaps.meanflow import AverageVelocity, InstantVelocity, MeanFlowLoss, meanflow_target
from flowkit_gaussian.path import GaussianPath
from flowkit_gaussian.schedules import OTSchedule
from flowkit_losses.cfm import CFMLoss
from flowkit_nets.mlp import MLP
from flowkit_simulators.dynamics import FlowODE
from flowkit_simulators.simulators import EulerSimulator
from torch import Tensor, nn

from flowkit.engine import build_pipeline
from flowkit.errors import CapabilityError
from flowkit.interfaces import Network, check_pair
from flowkit.testing import make_manager

A, B = -0.7, 0.4  # the linear flow dx/dt = A x + B


def two_time_mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return MLP(MLP.Params(hidden=[32, 32], second_time=True, time_features=2), data_shape=(2,)).to(dtype)


def flow_average(x: Tensor, h: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    """The exact average velocity of ``dx/dt = a x + b`` over a step ``h`` from ``x``:
    ``(x_{t+h} - x) / h = (e^{a h} - 1) / h (x + b / a)``, ``a x + b`` at ``h = 0``."""
    h_b = h[:, None]
    safe = torch.where(h_b == 0, torch.ones_like(h_b), h_b)
    slope = torch.where(h_b == 0, a * torch.ones_like(h_b), torch.expm1(a * safe) / safe)
    return slope * (x + b / a)


class LinearFlowNet(Network):
    """``u(x, t, r)``, the average velocity of ``dx/dt = a x + b`` with learnable ``a, b``: it can
    represent the exact one (``a = A``, ``b = B``)."""

    inputs = ("r",)

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor, r: Tensor | None = None) -> Tensor:  # type: ignore[override]
        assert r is not None
        return flow_average(x, r - t, self.a, self.b)


class LinearFlowPath:
    """Trajectories of ``dx/dt = A x + B`` from ``x_0 = noise`` (``z`` unused): ``x_t`` and the
    velocity ``A x_t + B``, the conditional velocity equal to the marginal one (one trajectory per
    start), so the MeanFlow loss of the exact average velocity is zero."""

    t_range = (0.0, 1.0)

    def sample_with_target(self, z, t, noise, generator=None):
        x = flow_average(noise, t, A, B) * t[:, None] + noise  # x_t = x_0 + t u(x_0, 0, t)
        return x, A * x + B


def draws(n=512, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=dtype)
    r = t + (1 - t) * torch.rand(n, generator=g, dtype=dtype)
    return torch.randn(n, 2, generator=g, dtype=dtype), t, r, torch.randn(n, 2, generator=g, dtype=dtype)


def test_jvp_target_equals_a_finite_difference_target_in_float64():
    net = two_time_mlp()
    x, t, r, v = draws(64)
    u, target = meanflow_target(net, x, t, r, v)
    eps = 1e-5
    ahead = net(x + eps * v, t + eps, r=r)
    behind = net(x - eps * v, t - eps, r=r)
    du_dt = (ahead - behind) / (2 * eps)  # d/dt u(x + s v, t + s, r) at s = 0, r held fixed
    assert torch.allclose(u, net(x, t, r=r), rtol=0, atol=1e-12)
    assert not target.requires_grad
    assert (target - (v + (r - t)[:, None] * du_dt)).abs().max() < 1e-4
    assert (target - v).abs().max() > 1e-2  # the derivative term matters: a planted zero would show


def test_the_closed_form_average_velocity_is_the_loss_s_zero_and_only_there():
    loss = MeanFlowLoss(MeanFlowLoss.Params(weight_power=0.0, r_equals_t=0.0))
    z, t, r, noise = draws()
    exact = loss.loss_at(InstantVelocity(LinearFlowNet(A, B)), LinearFlowPath(), z, t, r, noise)
    assert exact.loss.item() < 1e-24
    for a, b in [(A + 0.05, B), (A, B - 0.05), (0.0 + 1e-9, 0.0)]:
        off = loss.loss_at(InstantVelocity(LinearFlowNet(a, b)), LinearFlowPath(), z, t, r, noise)
        assert off.loss.item() > 1e-5, (a, b)


def test_the_average_velocity_of_a_linear_flow_is_learned_exactly():
    net = LinearFlowNet(0.3, -0.2)
    loss = MeanFlowLoss(MeanFlowLoss.Params(r_equals_t=0.25))  # adaptive weight, p = 1
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(1)
    path = LinearFlowPath()
    for _ in range(600):
        z = torch.zeros(256, 2, dtype=torch.float64)
        value = loss(InstantVelocity(net), path, z, generator=g)
        optimizer.zero_grad()
        value.loss.backward()
        optimizer.step()
    assert abs(net.a.item() - A) < 1e-6 and abs(net.b.item() - B) < 1e-6, (net.a.item(), net.b.item())


def test_r_equal_to_t_is_flow_matching():
    net = two_time_mlp(torch.float32)
    path = GaussianPath(GaussianPath.Params(schedule=OTSchedule()))
    z, t, _, noise = draws(256, dtype=torch.float32)
    x, v = path.sample_with_target(z, t, noise)
    _, target = meanflow_target(net, x, t, t, v)
    assert torch.equal(target, v)  # (r - t) du/dt vanishes exactly
    role = InstantVelocity(net)
    assert torch.equal(role(x, t), net(x, t, r=t))
    plain = MeanFlowLoss(MeanFlowLoss.Params(weight_power=0.0)).loss_at(role, path, z, t, t, noise)
    cfm = CFMLoss().loss_at(role, path, z, t, noise)
    assert torch.allclose(plain.loss, cfm, rtol=1e-6, atol=0)
    assert torch.allclose(plain.scalars["unweighted"], cfm, rtol=1e-6, atol=0)


def test_adaptive_weight_is_a_stopped_gradient_of_the_error():
    net = two_time_mlp()
    path = GaussianPath(GaussianPath.Params(schedule=OTSchedule()))
    z, t, r, noise = draws(128)
    loss = MeanFlowLoss(MeanFlowLoss.Params(weight_power=0.5, weight_eps=0.01))
    value = loss.loss_at(InstantVelocity(net), path, z, t, r, noise)
    x, v = path.sample_with_target(z, t, noise)
    u, target = meanflow_target(net, x, t, r, v)
    error = (u - target).pow(2).mean(1)
    assert torch.allclose(value.scalars["unweighted"], error.mean(), rtol=1e-12, atol=0)
    assert torch.allclose(value.loss, (error / (error + 0.01).sqrt()).mean(), rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(value.loss, net.net[0].weight)
    (expected,) = torch.autograd.grad((error / (error.detach() + 0.01).sqrt()).mean(), net.net[0].weight)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-14)


class ConstantNet(Network):
    """``u(x, t, r) = c``, one learnable value for every coordinate: what the loss makes of a spread
    of targets at one state."""

    inputs = ("r",)

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor, r: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return self.c.expand_as(x)


class TwoValuedVelocityPath:
    """One state, and a conditional velocity that is 0 on 70% of the rows and 1 on the rest: its mean
    is 0.3, its mode 0."""

    t_range = (0.0, 1.0)

    def sample_with_target(self, z, t, noise, generator=None):
        v = (torch.arange(z.shape[0]) % 10 >= 7).to(z.dtype)[:, None].expand_as(z)
        return torch.zeros_like(z), v


@pytest.mark.parametrize(("power", "fixed_point"), [(0.0, 0.3), (1.0, 4.284e-4)])
def test_the_adaptive_weight_s_fixed_point_is_the_mean_only_without_it(power, fixed_point):
    """docs/math.md, "The adaptive weight in few dimensions": with p = 0 the loss settles at the mean
    of the targets at a state; with p = 1 and c = 1e-3 at the root of E[w (u - T)] = 0,
    0.7 u / (u^2 + c) = 0.3 (1 - u) / ((1 - u)^2 + c), u = 4.28e-4, next to the mode 0."""
    net = ConstantNet(0.5)
    loss = MeanFlowLoss(MeanFlowLoss.Params(weight_power=power, weight_eps=1e-3))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    z = torch.zeros(100, 2, dtype=torch.float64)
    t = torch.rand(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(1500):
        value = loss.loss_at(InstantVelocity(net), TwoValuedVelocityPath(), z, t, t, z)
        optimizer.zero_grad()
        value.loss.backward()
        optimizer.step()
    assert abs(net.c.item() - fixed_point) < 1e-6


class CountingNet(Network):
    """A two-time MLP that records the batch size of every call."""

    inputs = ("r",)

    def __init__(self) -> None:
        super().__init__()
        self.inner = two_time_mlp()
        self.sizes: list[int] = []

    def forward(self, x: Tensor, t: Tensor, r: Tensor | None = None) -> Tensor:  # type: ignore[override]
        self.sizes.append(x.shape[0])
        return self.inner(x, t, r=r)


def test_only_the_rows_with_r_above_t_pay_for_the_jvp_and_the_loss_is_the_whole_batch_s():
    net = CountingNet()
    path = GaussianPath(GaussianPath.Params(schedule=OTSchedule()))
    z, t, r, noise = draws(128)
    r = torch.where(torch.arange(128) % 4 == 0, r, t)  # a quarter of the rows jump, interleaved
    loss = MeanFlowLoss(MeanFlowLoss.Params(weight_power=0.5, weight_eps=0.01))
    value = loss.loss_at(InstantVelocity(net), path, z, t, r, noise)
    assert net.sizes == [96, 32]  # one plain pass on the rows with r = t, one jvp on the others
    x, v = path.sample_with_target(z, t, noise)
    u, target = meanflow_target(net.inner, x, t, r, v)  # the jvp of every row: the same loss
    error = (u - target).pow(2).mean(1)
    assert torch.allclose(value.loss, (error / (error + 0.01).sqrt()).mean(), rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(value.loss, net.inner.net[0].weight)
    whole = (error / (error.detach() + 0.01).sqrt()).mean()
    (expected,) = torch.autograd.grad(whole, net.inner.net[0].weight)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-14)


def test_two_times_are_ordered_on_the_t_range_with_the_asked_share_equal():
    path = LinearFlowPath()
    path.t_range = (0.0, 0.9)
    loss = MeanFlowLoss(MeanFlowLoss.Params(r_equals_t=0.3))
    cpu, f32 = torch.device("cpu"), torch.float32
    t, r = loss.sample_times(40_000, path, torch.Generator().manual_seed(0), cpu, f32)
    assert (t <= r).all() and t.min() >= 0 and r.max() <= 0.9
    assert abs((t == r).float().mean().item() - 0.3) < 0.01
    again = loss.sample_times(40_000, path, torch.Generator().manual_seed(0), cpu, f32)
    assert torch.equal(t, again[0]) and torch.equal(r, again[1])
    # the smaller of two uniforms on [0, 0.9]: mean 0.3; the larger: mean 0.6 where r > t
    assert abs(t.mean().item() - 0.3) < 0.01 and abs(r[t != r].mean().item() - 0.6) < 0.01


def test_end_time_draws_the_second_time_and_unset_it_is_time_again():
    """By hand: one draw of time, one of end_time, sorted, then the uniform draw of the r = t share."""
    from flowkit_losses.times import LogitNormalTime, UniformTime

    path = LinearFlowPath()
    cpu, f32 = torch.device("cpu"), torch.float32
    near_data = LogitNormalTime(LogitNormalTime.Params(mean=3.0, std=1.0))
    loss = MeanFlowLoss(MeanFlowLoss.Params(time=UniformTime(), end_time=near_data, r_equals_t=0.25))
    t, r = loss.sample_times(1000, path, torch.Generator().manual_seed(1), cpu, f32)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1000, generator=g)
    b = torch.sigmoid(3.0 + torch.randn(1000, generator=g))
    same = torch.rand(1000, generator=g) < 0.25
    assert torch.equal(t, torch.minimum(a, b))
    assert torch.equal(r, torch.where(same, t, torch.maximum(a, b)))
    # unset, the second time is a draw of time: the draws of the loss before end_time existed
    plain = MeanFlowLoss(MeanFlowLoss.Params(time=UniformTime(), r_equals_t=0.25))
    t, r = plain.sample_times(1000, path, torch.Generator().manual_seed(1), cpu, f32)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(1000, generator=g), torch.rand(1000, generator=g)
    same = torch.rand(1000, generator=g) < 0.25
    assert torch.equal(t, torch.minimum(a, b))
    assert torch.equal(r, torch.where(same, t, torch.maximum(a, b)))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_jumps_with_the_exact_average_are_exact_at_any_step_count(steps):
    net = LinearFlowNet(A, B)
    dynamics = MeanFlowDynamics(average=AverageVelocity(net))
    x0 = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    simulator = MeanFlowJump()
    ts = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    x1 = simulator.simulate(dynamics, x0, ts)
    exact = x0 + flow_average(x0, torch.ones(100, dtype=torch.float64), A, B)
    assert torch.allclose(x1, exact, rtol=0, atol=1e-12)
    assert simulator.last_nfe == steps
    assert simulator.simulate_trajectory(dynamics, x0, ts).shape == (steps + 1, 100, 2)
    # an ODE simulator integrates the drift u(x, t, t) = A x + B of the same dynamics
    euler = EulerSimulator()
    euler.simulate(dynamics, x0, ts)
    assert euler.last_nfe == steps
    assert torch.allclose(dynamics.drift(x0, ts[:1].expand(100)), A * x0 + B, atol=1e-12)


def test_the_jump_simulator_refuses_dynamics_with_only_a_drift():
    with pytest.raises(CapabilityError, match='offers only a drift; use dynamics = "mean-flow"'):
        check_pair(MeanFlowJump(), FlowODE(velocity=lambda x, t: x))
    check_pair(EulerSimulator(), MeanFlowDynamics(average=lambda x, t, r: x))  # ODE simulators work


MEANFLOW = {
    "data": {"kind": "moons"},
    "path": {"kind": "gaussian", "schedule": "ot"},
    "model": {"kind": "mlp", "hidden": [16], "second_time": True},
    "loss": {"kind": "meanflow"},
    "train": {"steps": 2, "batch_size": 8},
    "sample": {"simulator": "mean-flow-jump", "dynamics": "mean-flow", "steps": 1, "n": 8},
    "evaluate": {"n": 8},
}


def build(**changes):
    tables = {name: dict(table) for name, table in MEANFLOW.items()}
    for key, value in changes.items():
        table, name = key.split("__")
        tables[table][name] = value
    return build_pipeline(tables, (), make_manager())


def test_build_time_refusals_name_the_fix():
    build()
    with pytest.raises(Exception, match=r"network 'mlp' takes no second time r .*second_time = true"):
        build(model__second_time=False)
    with pytest.raises(Exception, match="dynamics 'flow' offers only a drift"):
        build(sample__dynamics="flow")
    with pytest.raises(Exception, match=r"needs the average velocity .* provides velocity"):
        build(loss__kind="cfm", model__second_time=False)
