"""The adaptive Dormand–Prince 5(4) simulator ``dopri5``: accuracy, NFE accounting, the engine contract."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, TINY
from flowkit_simulators.adaptive import Dopri5Simulator
from flowkit_simulators.dynamics import ExtensionSDE, FlowODE
from flowkit_simulators.timegrids import UniformGrid

from flowkit.engine import build_pipeline, run_pipeline
from flowkit.errors import CapabilityError, FlowkitError
from flowkit.testing import check_component, make_manager

THETA = 1.3
TOLS = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
X0 = torch.tensor([[0.2], [0.7], [0.5]], dtype=torch.float64)
SPAN = torch.tensor([0.0, 1.0], dtype=torch.float64)


def decay(x, t):
    return -THETA * x


def logistic(x, t):
    """``dx/dt = cos(t) x (1 - x)``; ``t`` is ``(B,)``."""
    return torch.cos(t)[:, None] * x * (1 - x)


def decay_exact(x0, t):
    return math.exp(-THETA * t) * x0


def logistic_exact(x0, t):
    return 1.0 / (1.0 + (1.0 / x0 - 1.0) * math.exp(-math.sin(t)))


PROBLEMS = [(decay, decay_exact), (logistic, logistic_exact)]


def dopri5(tol: float, **kwargs) -> Dopri5Simulator:
    return Dopri5Simulator(Dopri5Simulator.Params(rtol=tol, atol=tol, **kwargs))


def errors_and_nfe(field, exact):
    errors, nfe = [], []
    for tol in TOLS:
        simulator = dopri5(tol)
        x1 = simulator.simulate(FlowODE(velocity=field), X0, SPAN)
        errors.append((x1 - exact(X0, 1.0)).abs().max().item())
        nfe.append(simulator.last_nfe)
    return errors, nfe


def test_is_a_valid_simulator_component():
    check_component("simulator", Dopri5Simulator)
    assert Dopri5Simulator.adaptive is True and Dopri5Simulator.capturable is False


def test_is_registered_as_dopri5():
    manager = make_manager()
    assert manager.registry.get("simulator", "dopri5").cls is Dopri5Simulator


@pytest.mark.parametrize(("field", "exact"), PROBLEMS, ids=["decay", "logistic"])
def test_error_decreases_with_the_tolerance(field, exact):
    errors, _ = errors_and_nfe(field, exact)
    # With a few steps at loose tolerances, where the steps land is a matter of luck (measured on the
    # logistic problem: 6.4e-6 at 1e-3, 1.1e-5 at 1e-4), so: down over every two decades, and
    # strictly down from 1e-4 on.
    assert all(errors[i + 2] < errors[i] for i in range(len(errors) - 2)), errors
    assert all(b < a for a, b in itertools.pairwise(errors[1:])), errors
    assert errors[-1] < 1e-7, errors


@pytest.mark.parametrize(
    ("field", "exact", "low", "high"),
    [(decay, decay_exact, 0.9, 1.2), (logistic, logistic_exact, 0.6, 1.3)],
    ids=["decay", "logistic"],
)
def test_global_error_is_proportional_to_the_tolerance(field, exact, low, high):
    errors, _ = errors_and_nfe(field, exact)
    slope = float(np.polyfit(np.log(TOLS), np.log(errors), 1)[0])  # measured: 1.06 and 0.69
    assert low <= slope <= high, (slope, errors)


@pytest.mark.parametrize(("field", "exact"), PROBLEMS, ids=["decay", "logistic"])
def test_looser_tolerance_costs_fewer_evaluations(field, exact):
    _, nfe = errors_and_nfe(field, exact)
    assert all(b >= a for a, b in itertools.pairwise(nfe)), nfe
    assert nfe[0] < nfe[-1], nfe


@pytest.mark.parametrize("first_step", [0.0, 0.9], ids=["automatic", "given"])
def test_nfe_is_six_per_trial_step_plus_the_start(first_step):
    # A stiff-ish decay with a too large first step: some steps are rejected.
    simulator = dopri5(1e-8, first_step=first_step)
    dynamics = FlowODE(velocity=lambda x, t: -20.0 * x)
    calls = []
    wrapped = FlowODE(velocity=lambda x, t: calls.append(t.shape) or dynamics.drift(x, t))
    x1 = simulator.simulate(wrapped, X0, SPAN)
    assert torch.allclose(x1, math.exp(-20.0) * X0, rtol=0, atol=1e-8)
    start = 1 if first_step else 2  # the drift at the start, plus one for the automatic first step
    trials = simulator.last_accepted + simulator.last_rejected
    assert simulator.last_nfe == 6 * trials + start == len(calls)
    assert all(shape == (X0.shape[0],) for shape in calls)  # t is (B,)
    if first_step:
        assert simulator.last_rejected > 0


@pytest.mark.parametrize(("field", "exact"), PROBLEMS, ids=["decay", "logistic"])
def test_trajectory_is_at_exactly_the_grid_times(field, exact):
    ts = UniformGrid()(7, 0.0, 1.0)
    seen: list[float] = []

    def spy(x, t):
        seen.append(float(t[0]))
        return field(x, t)

    trajectory = dopri5(1e-9).simulate_trajectory(FlowODE(velocity=spy), X0, ts)
    assert trajectory.shape == (8, *X0.shape)
    for i, t in enumerate(ts.tolist()):
        assert torch.allclose(trajectory[i], exact(X0, t), rtol=0, atol=1e-8), i
    assert trajectory[0].equal(X0)
    assert set(ts.tolist()) <= set(seen)  # FSAL: the drift is evaluated at each grid time exactly


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_works_in_both_dtypes_and_reports_progress(dtype):
    reports = []
    x0 = X0.to(dtype)
    x1 = dopri5(1e-5).simulate(
        FlowODE(velocity=logistic),
        x0,
        SPAN.to(dtype),
        progress=lambda done, total: reports.append((done, total)),
    )
    assert x1.dtype == dtype
    assert torch.allclose(x1, logistic_exact(x0, 1.0), atol=1e-5)
    assert reports[-1] == (1000, 1000)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_max_steps_is_enforced_with_a_message_that_says_what_to_change():
    with pytest.raises(FlowkitError, match=r"max_steps = 3 at t = .*raise max_steps or loosen rtol/atol"):
        dopri5(1e-10, max_steps=3).simulate(FlowODE(velocity=logistic), X0, SPAN)


def test_a_non_finite_state_is_an_error():
    with pytest.raises(FlowkitError, match="not finite"):
        dopri5(1e-5).simulate(FlowODE(velocity=decay), torch.full((2, 1), math.nan), SPAN)
    poisoned = FlowODE(velocity=lambda x, t: torch.where(t[:, None] > 0, x * math.nan, x))
    with pytest.raises(FlowkitError, match="non-finite at t = 0"):
        dopri5(1e-5).simulate(poisoned, X0, SPAN)
    # Finite up to t = 0.5 only: the steps shrink onto the singularity until they underflow.
    blowup = FlowODE(velocity=lambda x, t: torch.where(t[:, None] > 0.5, x * math.inf, x))
    with pytest.raises(FlowkitError, match=r"underflowed at t = 0\.5"):
        dopri5(1e-5).simulate(blowup, X0, SPAN)


def test_refuses_an_sde():
    sde = ExtensionSDE(velocity=decay, score=decay)
    with pytest.raises(CapabilityError, match="is an SDE"):
        dopri5(1e-5).check(sde)
    with pytest.raises(CapabilityError):
        dopri5(1e-5).simulate(sde, X0, SPAN)


def test_parameters_are_validated():
    for bad in [{"rtol": 0.0}, {"atol": -1.0}, {"max_steps": 0}, {"first_step": -0.1}]:
        with pytest.raises(ValueError):
            Dopri5Simulator.Params(**bad)


def test_runs_through_the_engine_uncaptured(tmp_path):
    text = TINY.format(out=(tmp_path / "runs" / "{name}").as_posix()) + "\n[report]\nplots = false\n"
    text = text.replace('simulator = "euler"', 'simulator = { kind = "dopri5", rtol = 1e-4, atol = 1e-4 }')
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    manager = make_manager()
    pipeline = build_pipeline(path, (), manager)
    assert pipeline.capture is False  # decided when built
    run = run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    metrics = json.loads((run.directory / "metrics.json").read_text())
    assert metrics["nfe"] > 0 and metrics["sampler_captured"] is False
    samples = np.load(run.directory / "samples.npy")
    assert samples.shape == (pipeline.sample.n, 2) and np.isfinite(samples).all()


@pytest.mark.slow
def test_oracle_sampled_with_dopri5_is_within_1_5_times_the_noise_floor(tmp_path):
    manager = make_manager()
    pipeline = build_pipeline(EXAMPLES / "oracle-ode.toml", ['sample.simulator={kind="dopri5"}'], manager)
    metrics = run_pipeline(pipeline, manager, out=str(tmp_path / "oracle"), quiet=True).metrics
    assert metrics["nfe"] > 0 and metrics["sampler_captured"] is False
    assert metrics["distance"] <= 1.5 * metrics["noise_floor"], metrics
