"""Shortcut models (plugins/flowkit_flowmaps/shortcut.py, docs/math.md "Shortcut models"): the
self-consistency target against two half steps written by hand, d = 0 as the instantaneous velocity
(flow matching), the exact flow map as the loss's zero, the step draws, and the build-time refusals."""

from __future__ import annotations

import pytest
import torch
from flowkit_flowmaps.jumps import MeanFlowDynamics, MeanFlowJump
from flowkit_flowmaps.meanflow import AVERAGE_VELOCITY, InstantVelocity
from flowkit_flowmaps.shortcut import ShortcutLoss, two_half_steps
from flowkit_gaussian.path import GaussianPath
from flowkit_gaussian.schedules import OTSchedule
from flowkit_losses.cfm import CFMLoss
from flowkit_nets.mlp import MLP
from test_meanflow import A, B, LinearFlowNet, LinearFlowPath, flow_average  # the linear flow's closed form

from flowkit.engine import build_pipeline
from flowkit.testing import make_manager

OT = GaussianPath(GaussianPath.Params(schedule=OTSchedule()))


def two_time_mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return MLP(MLP.Params(hidden=[32, 32], second_time=True, time_features=2), data_shape=(2,)).to(dtype)


def batch(n=64, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z, noise = torch.randn(n, 2, generator=g, dtype=dtype), torch.randn(n, 2, generator=g, dtype=dtype)
    d = 0.5 ** torch.randint(0, 6, (n,), generator=g).to(dtype)
    t = torch.floor(torch.rand(n, generator=g, dtype=dtype) / d) * d
    return z, noise, t, d


def test_the_consistency_target_is_two_half_steps_of_the_model_by_hand():
    net = two_time_mlp()
    z, noise, t, d = batch()
    x, _ = OT.sample_with_target(z, t, noise)
    h = d / 2
    first = net(x, t, r=t + h)  # s(x, t, d/2) = u(x, t, t + d/2)
    second = net(x + h[:, None] * first, t + h, r=t + d)  # s(x', t + d/2, d/2)
    by_hand = (first + second) / 2
    target = two_half_steps(net, x, t, h, h)
    assert not target.requires_grad
    assert torch.allclose(target, by_hand, rtol=0, atol=1e-14)
    # the loss on consistency rows only is ||s(x, t, d) - target||^2, with the target's gradient stopped
    loss = ShortcutLoss(ShortcutLoss.Params(consistency=1.0))
    value = loss.loss_at(InstantVelocity(net), OT, z, t, d, h, noise, m=64)
    error = (net(x, t, r=t + d) - by_hand.detach()).pow(2).mean(1)
    assert torch.allclose(value.loss, error.mean(), rtol=1e-12, atol=0)
    assert torch.allclose(value.scalars["consistency"], error.mean(), rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(value.loss, net.net[0].weight)
    (expected,) = torch.autograd.grad(error.mean(), net.net[0].weight)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-14)
    # a target that let the gradient through would differ: the stop-gradient is what the test pins
    (leaky,) = torch.autograd.grad(
        (net(x, t, r=t + d) - (first + second) / 2).pow(2).mean(1).mean(), net.net[0].weight
    )
    assert (leaky - grad).abs().max() > 1e-6


def test_the_smallest_step_takes_its_half_steps_with_the_instantaneous_velocity():
    net = two_time_mlp()
    z, noise, t, _ = batch()
    d = torch.full_like(t, 1 / 128)
    x, _ = OT.sample_with_target(z, t, noise)
    h = d / 2
    first = net(x, t, r=t)  # s(x, t, 0)
    second = net(x + h[:, None] * first, t + h, r=t + h)  # s(x', t + h, 0)
    assert torch.allclose(two_half_steps(net, x, t, h, torch.zeros_like(h)), (first + second) / 2, atol=1e-14)


def test_d_zero_is_the_instantaneous_velocity_trained_by_flow_matching():
    net = two_time_mlp(torch.float32)
    z, noise, t, _ = batch(256, dtype=torch.float32)
    role = InstantVelocity(net)
    x, _ = OT.sample_with_target(z, t, noise)
    assert torch.equal(role(x, t), net(x, t, r=t))  # the velocity role is s(x, t, 0)
    zero = torch.zeros_like(t)
    value = ShortcutLoss(ShortcutLoss.Params(consistency=0.0)).loss_at(role, OT, z, t, zero, zero, noise, m=0)
    cfm = CFMLoss().loss_at(role, OT, z, t, noise)
    assert torch.allclose(value.loss, cfm, rtol=1e-6, atol=0)
    assert value.scalars.keys() == {"flow"}


class EulerNet(LinearFlowNet):
    """``s(x, t, d) = a x + b`` whatever ``d``: the velocity, not a flow map (one Euler step per jump)."""

    def forward(self, x, t, r=None):  # type: ignore[override]
        return self.a * x + self.b


def test_the_exact_flow_map_is_the_loss_s_zero():
    """The exact average velocity of dx/dt = a x + b makes one jump of d land where two of d/2 do,
    for every a, b (self-consistency alone admits any flow map); flow matching at d = 0 picks the
    path's: both parts vanish for a = A, b = B only. A velocity used as a jump is not self-consistent."""
    z, noise, t, d = batch(128)
    z = torch.zeros_like(z)
    loss = ShortcutLoss(ShortcutLoss.Params(consistency=0.5))
    d[64:] = 0
    path = LinearFlowPath()
    for a, b, exact in [(A, B, True), (A + 0.05, B, False), (A, B - 0.05, False)]:
        value = loss.loss_at(InstantVelocity(LinearFlowNet(a, b)), path, z, t, d, d / 2, noise, m=64)
        assert value.scalars["consistency"].item() < 1e-24, (a, b)
        assert (value.scalars["flow"].item() < 1e-24) == exact, (a, b)
    euler = loss.loss_at(InstantVelocity(EulerNet(A, B)), path, z, t, d, d / 2, noise, m=64)
    assert euler.scalars["flow"].item() < 1e-24 and euler.scalars["consistency"].item() > 1e-6
    assert torch.allclose(LinearFlowNet(A, B)(noise, t, r=t + d), flow_average(noise, d, A, B), atol=1e-14)


def test_steps_are_powers_of_two_on_their_own_grid():
    path = LinearFlowPath()
    path.t_range = (0.0, 0.8)
    loss = ShortcutLoss(ShortcutLoss.Params(max_steps=8))
    cpu, f64 = torch.device("cpu"), torch.float64
    t, d, half = loss.sample_steps(40_000, path, torch.Generator().manual_seed(0), cpu, f64)
    sections = torch.round(0.8 / d)
    assert set(sections.unique().tolist()) == {1.0, 2.0, 4.0, 8.0}  # d = 0.8 / 2^k, k = 0 .. log2(8)
    for level in (1.0, 2.0, 4.0, 8.0):
        assert abs((sections == level).double().mean().item() - 0.25) < 0.01
    index = t / d
    assert torch.allclose(index, torch.round(index), atol=1e-9)  # t on the grid of its own step
    assert t.min() >= 0 and (t + d).max() <= 0.8 + 1e-12
    assert torch.equal(half, torch.where(sections == 8, torch.zeros_like(d), d / 2))
    again = loss.sample_steps(40_000, path, torch.Generator().manual_seed(0), cpu, f64)
    assert all(torch.equal(p, q) for p, q in zip((t, d, half), again, strict=True))
    assert loss.consistency_rows(256) == 64


SHORTCUT = {
    "data": {"kind": "moons"},
    "path": {"kind": "gaussian", "schedule": "ot"},
    "model": {"kind": "mlp", "hidden": [16], "second_time": True},
    "loss": {"kind": "shortcut"},
    "train": {"steps": 3, "batch_size": 16},
    "sample": {"simulator": "mean-flow-jump", "dynamics": "mean-flow", "steps": 1, "n": 8},
    "evaluate": {"n": 8},
}


def build(**changes):
    tables = {name: dict(table) for name, table in SHORTCUT.items()}
    for key, value in changes.items():
        table, name = key.split("__")
        tables[table][name] = value
    return build_pipeline(tables, (), make_manager())


def test_a_pipeline_trains_and_samples_in_one_jump():
    from flowkit.api import load_pipeline

    pipe = load_pipeline(SHORTCUT)
    pipe.train()
    x = pipe.sample(8)
    assert x.shape == (8, 2) and torch.isfinite(x).all()
    assert pipe.pipeline.sample.simulator.last_nfe == 1
    assert AVERAGE_VELOCITY in pipe.pipeline.context.roles


def test_build_time_refusals_name_the_fix():
    build()
    with pytest.raises(
        Exception, match=r"loss 'shortcut' .* network 'mlp' takes no second time r .*second_time = true"
    ):
        build(model__second_time=False)
    with pytest.raises(Exception, match=r"max_steps must be a power of two .* got 100"):
        build(loss__max_steps=100)
    with pytest.raises(Exception, match="dynamics 'flow' offers only a drift"):
        build(sample__dynamics="flow")


def test_jumps_sample_with_the_mean_flow_dynamics():
    net = LinearFlowNet(A, B)
    roles = ShortcutLoss().roles(net, OT)
    dynamics = MeanFlowDynamics(average=roles[AVERAGE_VELOCITY])
    x0 = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x1 = MeanFlowJump().simulate(dynamics, x0, torch.linspace(0, 1, 3, dtype=torch.float64))
    assert torch.allclose(x1, x0 + flow_average(x0, torch.ones(10, dtype=torch.float64), A, B), atol=1e-12)
