"""Couplings (independent, exact-ot, sinkhorn, label-aware pairing) and Schrödinger-bridge CFM."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from flowkit_couplings.bridge import BrownianBridgePath, SBCFMLoss
from flowkit_couplings.couplings import ExactOT, Independent, Sinkhorn, have_pot, squared_distances
from scipy.optimize import linear_sum_assignment

import flowkit
from flowkit.engine import build_pipeline
from flowkit.errors import CapabilityError, ConfigError, FlowkitError
from flowkit.interfaces import KINDS, Coupling
from flowkit.testing import build_component, check_component, make_manager


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def batch(n: int, seed: int = 0, dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), 0.5 * torch.randn(n, dim, generator=g) + 1.0


def total_cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    return float((x0.double() - x1.double()).square().sum())


def optimum(x0: torch.Tensor, x1: torch.Tensor) -> float:
    cost = squared_distances(x1.double(), x0.double()).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum())


# ---------------------------------------------------------------------------------------------------
# The kind and its components
# ---------------------------------------------------------------------------------------------------


def test_coupling_is_a_kind_and_the_builtins_register(manager):
    assert KINDS["coupling"] is Coupling
    assert manager.problems == []
    # reflow (plugins/flowkit_flowmaps) is tested in tests/test_reflow.py
    assert manager.registry.names("coupling") == ["exact-ot", "independent", "reflow", "sinkhorn"]
    for cls in (Independent, ExactOT, Sinkhorn):
        check_component("coupling", cls)


def test_independent_returns_its_inputs():
    x0, x1 = batch(8)
    labels = torch.arange(8)
    out = Independent()(x0, x1, labels)
    assert out[0] is x0 and out[1] is x1 and out[2] is labels


# ---------------------------------------------------------------------------------------------------
# exact-ot
# ---------------------------------------------------------------------------------------------------


def test_exact_ot_is_optimal_against_every_permutation():
    x0, x1 = batch(7, seed=3)
    paired, data, _ = ExactOT(ExactOT.Params(method="scipy"))(x0, x1)
    best = min(total_cost(x0[list(p)], x1) for p in itertools.permutations(range(7)))
    assert data is x1
    assert total_cost(paired, x1) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("method", ["scipy", "emd", "auto"])
def test_exact_ot_methods_reach_the_optimum_with_a_permutation(method):
    if method == "emd" and not have_pot():
        pytest.skip("POT is not installed")
    x0, x1 = batch(256, seed=1)
    coupling = ExactOT(ExactOT.Params(method=method))
    perm = coupling.permutation(x0, x1)
    assert torch.equal(torch.sort(perm).values, torch.arange(256))
    assert total_cost(x0[perm], x1) == pytest.approx(optimum(x0, x1), rel=1e-9)
    assert total_cost(x0[perm], x1) < 0.6 * total_cost(x0, x1)  # far below the independent pairing


def test_exact_ot_pairs_within_classes_only():
    x0, x1 = batch(60, seed=2)
    labels = torch.arange(60) % 3
    x1 = x1 + 4.0 * labels[:, None].float()  # classes far apart: global OT would mix the noise slots
    coupling = ExactOT(ExactOT.Params(method="scipy"))
    perm = coupling.permutation(x0, x1, labels)
    assert torch.equal(labels[perm], labels)  # noise slot i serves the class of labels[i]
    for c in range(3):
        index = torch.nonzero(labels == c).flatten()
        assert total_cost(x0[perm[index]], x1[index]) == pytest.approx(optimum(x0[index], x1[index]))
    assert not torch.equal(labels[coupling.permutation(x0, x1)], labels)
    _, _, same = coupling(x0, x1, labels)
    assert same is labels


def test_exact_ot_refuses_bad_shapes_and_a_missing_solver(monkeypatch):
    x0, x1 = batch(8)
    with pytest.raises(FlowkitError, match=r"coupling 'exact-ot': noise and data must have the same shape"):
        ExactOT()(x0, x1[:4])
    with pytest.raises(FlowkitError, match=r"labels y must have shape \(B,\) = \(8,\), got \(4,\)"):
        ExactOT()(x0, x1, torch.zeros(4))
    monkeypatch.setattr("flowkit_couplings.couplings.have_pot", lambda: False)
    with pytest.raises(CapabilityError, match=r'method = "emd" needs POT \(pip install pot\)'):
        ExactOT(ExactOT.Params(method="emd"))
    assert ExactOT().method == "scipy"


# ---------------------------------------------------------------------------------------------------
# sinkhorn
# ---------------------------------------------------------------------------------------------------


def test_sinkhorn_plan_has_uniform_marginals_and_tends_to_exact_ot():
    x0, x1 = batch(64, seed=4)
    uniform = torch.full((64,), 1 / 64)
    settled = Sinkhorn(Sinkhorn.Params(epsilon=0.03, iterations=5000, tolerance=1e-5)).log_plan(x0, x1).exp()
    assert torch.allclose(settled.sum(0), uniform, rtol=1e-4)
    assert torch.allclose(settled.sum(1), uniform, rtol=1e-3)
    sharp = Sinkhorn(Sinkhorn.Params(epsilon=1e-3, iterations=5000, tolerance=1e-6))
    plan = sharp.log_plan(x0, x1).exp()
    assert sharp.last_iterations == 5000  # small epsilon converges slowly: the cap holds
    perm = ExactOT(ExactOT.Params(method="scipy")).permutation(x0, x1)
    assert float(plan[torch.arange(64), perm].sum()) > 0.8  # the mass sits on the OT pairs
    flat = Sinkhorn(Sinkhorn.Params(epsilon=1e4)).log_plan(x0, x1).exp()
    assert torch.allclose(flat, torch.full((64, 64), 1 / 64**2), rtol=1e-2)  # ~ independent


def test_sinkhorn_plan_is_pots_at_the_same_epsilon():
    """The plan against POT's ``ot.sinkhorn`` (``reg = epsilon``) on the same raw squared-distance cost:
    their entries' absolute differences sum to under 1e-4 (a total mass of 1), far below what the
    plan of epsilon / 2, of 0.9 epsilon or of a cost divided by its maximum (as some implementations
    normalise it) differ by (benchmarks/reference/test-notes.md)."""
    import ot

    x0, x1 = batch(64, seed=8)
    epsilon = 0.5  # 0.15 of the cost's median: a plan neither near a permutation nor near uniform
    ours = Sinkhorn(Sinkhorn.Params(epsilon=epsilon, iterations=20000, tolerance=1e-7)).log_plan(x0, x1)
    cost = squared_distances(x1.double(), x0.double()).numpy()  # rows data, columns noise, as ours
    uniform = np.full(64, 1 / 64)
    reference = ot.sinkhorn(uniform, uniform, cost, epsilon, method="sinkhorn_log", stopThr=1e-12)
    assert np.abs(ours.exp().double().numpy() - reference).sum() < 1e-4


def test_sinkhorn_samples_pairs_from_the_plan_reproducibly():
    x0, x1 = batch(4, seed=5)
    coupling = Sinkhorn(Sinkhorn.Params(epsilon=0.5, tolerance=1e-6, iterations=2000))
    conditional = (coupling.log_plan(x0, x1).exp() * 4).double()  # rows: P(noise i | data j)
    counts = torch.zeros(4, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for _ in range(4000):
        paired, _, _ = coupling(x0, x1, generator=g)
        hit = (paired[:, None, :] == x0[None, :, :]).all(-1)  # (data j, noise i)
        counts += hit.double()
    assert (counts / 4000 - conditional).abs().max() < 0.03  # 4000 draws: std <= 0.008
    a = coupling(x0, x1, generator=torch.Generator().manual_seed(7))[0]
    b = coupling(x0, x1, generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(a, b)


def test_sinkhorn_never_pairs_across_classes():
    x0, x1 = batch(40, seed=6)
    labels = torch.arange(40) % 4
    coupling = Sinkhorn(Sinkhorn.Params(epsilon=10.0))
    plan = coupling.log_plan(x0, x1, labels).exp()
    assert float(plan[labels[:, None] != labels[None, :]].sum()) == 0.0
    assert torch.allclose(plan.sum(1), torch.full((40,), 1 / 40), rtol=1e-3)
    paired, _, _ = coupling(x0, x1, labels, generator=torch.Generator().manual_seed(0))
    source = (paired[:, None, :] == x0[None, :, :]).all(-1).float().argmax(1)
    assert torch.equal(labels[source], labels)


# ---------------------------------------------------------------------------------------------------
# The CFM loss with a coupling; refusals at build time
# ---------------------------------------------------------------------------------------------------

PIPELINE = {
    "run": {"seed": 0},
    "data": {"kind": "moons"},
    "path": {"kind": "gaussian"},
    "model": {"kind": "mlp", "hidden": [32, 32]},
    "loss": {"kind": "cfm", "coupling": {"kind": "exact-ot"}},
    "train": {"steps": 5, "batch_size": 64},
    "sample": {"simulator": "euler", "steps": 2, "n": 100},
    "evaluate": {"n": 100},
}


def pipeline(**tables):
    spec = copy.deepcopy(PIPELINE)
    spec.update(tables)
    return spec


def test_cfm_defaults_to_the_independent_coupling_and_loses_nothing(manager):
    pipe = build_pipeline(pipeline(loss={"kind": "cfm"}), (), manager)
    loss = pipe.loss
    assert loss.params.coupling.registered_name == "independent"
    z = torch.randn(16, 2)
    role = pipe.context.roles["velocity"]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = loss.loss_at(
        role, pipe.path, z, loss.sample_times(16, pipe.path, g1), torch.randn(16, 2, generator=g1)
    )
    assert torch.equal(loss(role, pipe.path, z, generator=g2), expected)


def test_cfm_trains_on_the_optimal_pairs(manager):
    pipe = build_pipeline(pipeline(), (), manager)
    loss, role, path = pipe.loss, pipe.context.roles["velocity"], pipe.path
    z = torch.randn(32, 2) + 2.0
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    t = loss.sample_times(32, path, g1)
    noise = torch.randn(32, 2, generator=g1)
    paired = noise[loss.params.coupling.permutation(noise, z)]
    assert torch.equal(loss(role, path, z, generator=g2), loss.loss_at(role, path, z, t, paired))


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"path": {"kind": "gaussian", "schedule": "ve"}},
            "<dict>: [loss]: coupling 'exact-ot' pairs noise x_0 ~ p_init with data, but on path 'gaussian'",
        ),
        (
            {"loss": {"kind": "dsm", "coupling": "sinkhorn"}},
            "<dict>: [loss]: loss 'dsm' cannot use coupling 'sinkhorn'",
        ),
        (
            {"loss": {"kind": "sb-cfm"}, "model": {"kind": "velocity-score"}},
            "<dict>: [loss]: loss 'sb-cfm' trains on the Brownian-bridge path, but path 'gaussian' is not",
        ),
        (
            {"loss": {"kind": "sb-cfm"}, "path": {"kind": "brownian-bridge"}},
            "<dict>: [loss]: loss 'sb-cfm' trains a velocity and a score, but the [model] has no velocity",
        ),
        (
            {"loss": {"kind": "sb-cfm"}, "path": {"kind": "brownian-bridge", "sigma": 0.0}},
            "<dict>: [loss]: loss 'sb-cfm' pairs by the entropic plan with epsilon = 2 sigma^2, but [path]",
        ),
    ],
)
def test_impossible_couplings_are_refused_at_build_time(manager, tables, message):
    with pytest.raises(CapabilityError) as err:
        build_pipeline(pipeline(**tables), (), manager)
    assert str(err.value).startswith(message)


def test_an_unknown_coupling_is_a_config_error(manager):
    with pytest.raises(ConfigError, match=r"\[loss\.coupling\] key 'kind'.*unknown coupling 'exact'"):
        build_pipeline(pipeline(loss={"kind": "cfm", "coupling": {"kind": "exact"}}), (), manager)


def test_a_coupling_is_written_back_to_the_resolved_pipeline(manager):
    spec = pipeline(loss={"kind": "cfm", "coupling": {"kind": "sinkhorn", "epsilon": 0.2}})
    resolved = build_pipeline(spec, (), manager).resolved()
    assert resolved["loss"]["coupling"] == {
        "kind": "sinkhorn",
        "epsilon": 0.2,
        "iterations": 200,
        "tolerance": 1e-3,
    }


# ---------------------------------------------------------------------------------------------------
# The Brownian-bridge path and SB-CFM
# ---------------------------------------------------------------------------------------------------


def test_bridge_velocity_is_the_time_derivative_of_the_path():
    path = BrownianBridgePath(BrownianBridgePath.Params(sigma=0.7))
    z, x0 = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    # The same bridge noise eps at t - h and t + h: the same generator state.
    state = torch.Generator().manual_seed(0)
    x_plus = path.sample(z, t + h, x0, torch.Generator().manual_seed(0))
    x_minus = path.sample(z, t - h, x0, torch.Generator().manual_seed(0))
    x, u, eps = path.sample_with_score(z, t, x0, state)
    assert torch.allclose(u, (x_plus - x_minus) / (2 * h), atol=1e-6)
    mean = (1 - t[:, None]) * x0 + t[:, None] * z
    assert torch.allclose(x, mean + 0.7 * torch.sqrt(t * (1 - t))[:, None] * eps, atol=1e-12)
    # The noise form equals the x form of the conditional velocity in docs/math.md.
    form = z - x0 + (1 - 2 * t[:, None]) / (2 * t[:, None] * (1 - t[:, None])) * (x - mean)
    assert torch.allclose(u, form, atol=1e-9)


def test_bridge_given_z_alone_is_the_gaussian_it_claims():
    path = BrownianBridgePath(BrownianBridgePath.Params(sigma=0.8))
    n, t = 200_000, 0.3
    z = torch.full((n, 1), 2.0, dtype=torch.float64)
    x = path.sample(z, torch.full((n,), t, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    variance = (1 - t) ** 2 + 0.64 * t * (1 - t)
    assert float(x.mean()) == pytest.approx(2.0 * t, abs=5e-3)
    assert float(x.var()) == pytest.approx(variance, rel=1e-2)
    # Its z-only score and velocity: those of N(t z, b_t^2); the velocity moves the mean at rate z.
    probe = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    tt = torch.full((2,), t, dtype=torch.float64)
    z2 = torch.full((2, 1), 2.0, dtype=torch.float64)
    assert torch.allclose(path.target_score(probe, z2, tt), -(probe - 2.0 * t) / variance)
    on_mean = torch.full((1, 1), 2.0 * t, dtype=torch.float64)
    assert torch.allclose(path.target_velocity(on_mean, z2[:1], tt[:1]), z2[:1])


def test_sb_cfm_builds_both_roles_and_its_plan_has_epsilon_two_sigma_squared(manager):
    spec = pipeline(
        path={"kind": "brownian-bridge", "sigma": 0.4},
        model={"kind": "velocity-score", "velocity": {"kind": "mlp", "hidden": [16]}},
        loss={"kind": "sb-cfm"},
        sample={"simulator": "euler-maruyama", "dynamics": {"kind": "extension-sde", "sigma": 0.4}},
    )
    pipe = build_pipeline(spec, (), manager)
    assert set(pipe.context.roles) == {"velocity", "score"}
    assert isinstance(pipe.loss, SBCFMLoss) and pipe.loss.coupling.params.epsilon == pytest.approx(0.32)
    x, t = torch.randn(5, 2), torch.full((5,), 0.5)
    heads = pipe.model
    assert torch.equal(pipe.context.roles["velocity"](x, t), heads.velocity(x, t))
    assert torch.allclose(pipe.context.roles["score"](x, t), -heads.score(x, t) / (0.4 * 0.5))


def w2_after(spec, manager, n=1000):
    pipe = flowkit.load_pipeline(spec, manager=manager)
    pipe.train()
    return pipe.evaluate(pipe.sample(n))


@pytest.mark.slow
def test_ot_cfm_beats_independent_cfm_with_two_euler_steps(manager):
    """OT-CFM's few-step advantage: W2(OT-CFM) <= 0.6 W2(independent) after the same training, with
    Euler in 2 steps."""
    common = {
        "model": {"kind": "mlp", "hidden": [128, 128, 128]},
        "train": {"steps": 1000, "batch_size": 256, "lr": 2e-3, "warmup_steps": 100},
        "sample": {"simulator": "euler", "steps": 2, "n": 1000},
        "evaluate": {"n": 1000},
    }
    independent = w2_after(pipeline(loss={"kind": "cfm"}, **common), manager)
    ot = w2_after(pipeline(loss={"kind": "cfm", "coupling": "exact-ot"}, **common), manager)
    assert ot["distance"] <= 0.6 * independent["distance"], (ot, independent)


@pytest.mark.slow
def test_sb_cfm_samples_with_the_ode_and_the_sde(manager):
    spec = pipeline(
        path={"kind": "brownian-bridge", "sigma": 0.3},
        model={
            "kind": "velocity-score",
            "velocity": {"kind": "mlp", "hidden": [128, 128, 128]},
            "score": {"kind": "mlp", "hidden": [128, 128, 128]},
        },
        loss={"kind": "sb-cfm"},
        train={"steps": 1000, "batch_size": 256, "lr": 2e-3, "warmup_steps": 100},
        evaluate={"n": 1000},
    )
    spec["sample"] = {"simulator": "heun", "steps": 20, "n": 1000}
    ode = w2_after(spec, manager)
    spec["sample"] = {
        "simulator": "euler-maruyama",
        "dynamics": {"kind": "extension-sde", "sigma": 0.3},
        "steps": 100,
        "n": 1000,
    }
    sde = w2_after(spec, manager)
    assert ode["distance"] <= 2.5 * ode["noise_floor"], ode
    assert sde["distance"] <= 2.5 * sde["noise_floor"], sde
    # Without the score the SDE's drift would be the velocity alone, which spreads the samples by sigma.


def test_build_component_gives_a_working_coupling(manager):
    coupling = build_component(manager, "coupling", {"kind": "exact-ot", "method": "scipy"})
    x0, x1 = batch(16)
    assert total_cost(coupling(x0, x1)[0], x1) == pytest.approx(optimum(x0, x1))
    assert np.isclose(total_cost(coupling(x0, x1)[0], x1), optimum(x0, x1))


# ---------------------------------------------------------------------------------------------------
# The benchmarks' coupling rows run (tiny sizes; no timing is asserted)
# ---------------------------------------------------------------------------------------------------


def _benchmarks():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_couplings
    import bench_quality

    return bench_couplings, bench_quality


def test_coupling_speed_benchmark_rows_and_ratios():
    bench_couplings, _ = _benchmarks()
    cfg = bench_couplings.CouplingSpeedConfig(
        batches=[16], block_steps=[2], reps=2, coupling_reps=1, peers=False
    )
    result = bench_couplings.run(cfg, log=lambda message: None)
    rows = result["train"]["16"]["contenders"]
    assert list(rows) == [
        "raw",
        "flowkit",
        "flowkit exact-ot",
        "flowkit exact-ot in-step",
        "flowkit sinkhorn",
    ]
    for name in rows:
        rates = rows[name]["steps_per_s"]
        assert len(rates["values"]) == 2
        if name != "raw":
            assert rates["ratios"] == [
                a / b for a, b in zip(rates["values"], rows["raw"]["steps_per_s"]["values"], strict=True)
            ]
    assert set(result["coupling_ms"]["16"]) >= {"exact-ot scipy", "sinkhorn eps=0.05"}
    assert "| 16 | flowkit exact-ot |" in bench_couplings.table(result)


@pytest.mark.slow
def test_coupling_quality_benchmark_rows():
    _, bench_quality = _benchmarks()
    cfg = bench_quality.QualityConfig(train_steps=5, batch_size=32, steps=[1, 2], n=32)
    result = bench_quality.run_couplings(cfg, log=lambda message: None)
    assert list(result["rows"]) == list(bench_quality.COUPLING_ROWS)
    sb = result["rows"]["sb-cfm sigma=0.3"]
    assert [p["steps"] for p in sb["euler"]] == [1, 2] and sb["sde_100"]["distance"] > 0
    assert all(r["straightness"]["length_over_chord"] >= 1.0 - 1e-6 for r in result["rows"].values())
    assert "| exact-ot |" in bench_quality.couplings_table(result)


def test_the_cost_keeps_float32_inside_autocast():
    x0, x1 = batch(64, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cost = squared_distances(x1, x0)
    assert cost.dtype == torch.float32
    assert torch.allclose(cost, torch.cdist(x1.double(), x0.double()).square().float(), atol=1e-5)
