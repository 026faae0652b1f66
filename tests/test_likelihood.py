"""Log-likelihood by the instantaneous change of variables (flowkit/engine/likelihood.py): accuracy on
the exact mixture oracle, Hutchinson's estimator, convergence orders, the probability-flow ODE of a
score, dequantisation, and ``[evaluate] likelihood`` in a pipeline."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from flowkit_gaussian.mixture import OracleScore
from flowkit_gaussian.path import GaussianPath
from flowkit_simulators.adaptive import Dopri5Simulator
from flowkit_simulators.dynamics import ExtensionSDE, FlowODE
from flowkit_simulators.simulators import EulerSimulator, HeunSimulator, MidpointSimulator, RK4Simulator
from scipy import stats

from flowkit.api import load_pipeline
from flowkit.engine import build_pipeline
from flowkit.engine.likelihood import evaluate_likelihood, log_likelihood, summarize
from flowkit.engine.sections import DequantizeSection, LikelihoodSection
from flowkit.errors import CapabilityError, ConfigError, FlowkitError

ORACLE = EXAMPLES / "oracle-ode.toml"


def oracle(*overrides: str):
    """The pipeline of examples/oracle-ode.toml (exact velocity of the ring mixture), with overrides."""
    return load_pipeline(ORACLE, overrides=list(overrides)).pipeline


def settings(pipeline, **changes) -> LikelihoodSection:
    """``[evaluate] likelihood`` of ``pipeline`` (set with --set), or its defaults."""
    assert pipeline.evaluate.likelihood is not None
    import attrs

    return attrs.evolve(pipeline.evaluate.likelihood, **changes)


# --- the closed-form check of the formula and its sign ----------------------------------------------


def test_linear_flow_gives_the_pushed_forward_gaussian_exactly():
    """``u = -theta x`` carries ``N(0, I)`` to ``N(0, e^{-2 theta} I)``: ``div u = -theta D``, so the
    log-likelihood is ``log N(x; 0, e^{-2 theta})``; a wrong sign of the divergence is off by
    ``2 theta D``."""
    theta, dim = 0.7, 3
    x = torch.randn(64, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    path = GaussianPath()
    expected = stats.norm(scale=math.exp(-theta)).logpdf(x.numpy()).sum(axis=1)
    flow = FlowODE(velocity=lambda x, t: -theta * x)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    exact = log_likelihood(
        flow, Dopri5Simulator(Dopri5Simulator.Params(rtol=1e-10, atol=1e-10)), path.prior_log_prob, x, ts
    )
    np.testing.assert_allclose(exact.log_prob.numpy(), expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(exact.divergence[:, 0].numpy(), -theta * dim, rtol=1e-9)
    np.testing.assert_allclose(exact.noise.numpy(), math.exp(theta) * x.numpy(), rtol=1e-8)
    # The Jacobian is -theta I: Rademacher probes (|eps|^2 = D) estimate its trace without error,
    # Gaussian ones do not.
    generator = torch.Generator().manual_seed(1)
    rademacher = log_likelihood(
        flow,
        RK4Simulator(),
        path.prior_log_prob,
        x,
        torch.linspace(0, 1, 41, dtype=torch.float64),
        "hutchinson",
        3,
        "rademacher",
        generator,
    )
    np.testing.assert_allclose(rademacher.per_probe.numpy(), np.repeat(expected[:, None], 3, 1), atol=1e-6)
    gaussian = log_likelihood(
        flow,
        RK4Simulator(),
        path.prior_log_prob,
        x,
        torch.linspace(0, 1, 41, dtype=torch.float64),
        "hutchinson",
        3,
        "gaussian",
        generator,
    )
    assert float((gaussian.per_probe - torch.from_numpy(expected)[:, None]).abs().max()) > 0.1


def test_prior_log_prob_of_the_gaussian_path_is_the_prior_density():
    path = GaussianPath(GaussianPath.Params(schedule="ve"))  # prior N(0, 50^2 I)
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0)) * 40
    expected = stats.norm(scale=50.0).logpdf(x.numpy()).reshape(5, -1).sum(axis=1)
    np.testing.assert_allclose(path.prior_log_prob(x).numpy(), expected, rtol=1e-6)


# --- accuracy on the exact mixture oracle ------------------------------------------------------------


def test_default_settings_reach_a_thousandth_of_a_nat_within_60_evaluations():
    pipeline = oracle("evaluate.likelihood={}")
    report = evaluate_likelihood(pipeline, pipeline.evaluate.likelihood)
    metrics = report.metrics
    assert metrics["nfe"] <= 60
    assert metrics["n"] == 1000 and report.log_prob.shape == (1000,)
    assert abs(metrics["nll"] - metrics["exact_nll"]) <= 1e-3, metrics
    assert metrics["nll_gap"] == pytest.approx(metrics["nll"] - metrics["exact_nll"], abs=1e-15)
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (2 * math.log(2)))
    # per point too, not only on average: the error of rk4 with 15 steps stays below 0.05 nats
    x = load_heldout(pipeline, 1000)
    exact = pipeline.dataset.log_prob(x.double()).double()
    assert float((report.log_prob - exact).abs().max()) < 0.05


def load_heldout(pipeline, n):
    from flowkit.engine.likelihood import heldout_data

    return heldout_data(pipeline, n)


def test_dopri5_at_its_default_tolerances_is_ten_times_closer():
    pipeline = oracle('evaluate.likelihood={ simulator = "dopri5", n = 300 }')
    metrics = evaluate_likelihood(pipeline, pipeline.evaluate.likelihood).metrics
    assert abs(metrics["nll_gap"]) <= 1e-4, metrics
    assert (metrics["nfe"] - 2) % 6 == 0 and metrics["nfe"] > 60  # FSAL steps: 6 per trial + 2


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_lies_within_three_standard_errors_of_the_exact_divergence(noise):
    pipeline = oracle("evaluate.likelihood={ n = 400 }")
    exact = evaluate_likelihood(pipeline, settings(pipeline)).metrics
    estimated = evaluate_likelihood(
        pipeline, settings(pipeline, estimator="hutchinson", probes=4, noise=noise)
    ).metrics
    se = estimated["nll_std_error"]
    assert 0 < se < 0.1, estimated  # an informative error bar, not a vacuous one
    assert abs(estimated["nll"] - exact["nll"]) <= 3 * se, (estimated, exact)
    assert estimated["nfe"] == exact["nfe"] == 60 and estimated["probes"] == 4


def test_hutchinson_standard_error_is_the_probes_spread():
    """With m probes the reported error is sqrt(sum_i var_i / m) / n, var_i the spread of point i's
    probes: checked against the spread of the mean over many independent repetitions."""
    pipeline = oracle("evaluate.likelihood={ n = 200 }")
    means, errors = [], []
    for seed in range(20):
        pipeline.run = type(pipeline.run)(seed, pipeline.run.device, pipeline.run.out)
        base = settings(pipeline, estimator="hutchinson", probes=2)
        # the same points each time (drawn once), the probes from each seed
        metrics = evaluate_likelihood(pipeline, base, data=fixed_points(pipeline)).metrics
        means.append(metrics["nll"])
        errors.append(metrics["nll_std_error"])
    spread = float(np.std(means, ddof=1))
    assert 0.5 < spread / float(np.mean(errors)) < 1.5, (spread, np.mean(errors))


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_standard_error_is_sqrt_of_the_probe_variance_over_m_n(noise):
    """For ``u(x) = A x`` each probe's divergence estimate ``v^T A v`` is the same at every ``x`` and
    time, with variance ``2 ||S||_F^2`` (Gaussian ``v``) or ``2 sum_{i != j} S_ij^2`` (Rademacher),
    ``S = (A + A^T) / 2``. Over ``t`` in ``[0, 1]`` the per-probe log-likelihoods of a point then
    spread by exactly that, and the reported error over ``n`` points and ``m`` probes is
    ``sqrt(Var / (m n))``: within 4% (over 4 of its seed-to-seed standard deviations,
    benchmarks/reference/test-notes.md), where an error without the 1/m is twice it. It is also, to
    rounding, ``sqrt(sum_i var_i / m) / n`` of the per-probe estimates themselves."""
    a = torch.tensor([[0.5, 1.0, -0.3], [0.2, -0.4, 0.8], [-0.6, 0.1, 0.3]], dtype=torch.float64)
    s = (a + a.T) / 2
    off_diagonal = float((s * s).sum() - (s.diag() ** 2).sum())
    variance = 2 * float((s * s).sum()) if noise == "gaussian" else 2 * off_diagonal
    n, m = 4000, 4
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = log_likelihood(
        FlowODE(velocity=lambda x, t: x @ a.T),
        EulerSimulator(),
        GaussianPath().prior_log_prob,
        x,
        torch.linspace(0, 1, 5, dtype=torch.float64),
        estimator="hutchinson",
        probes=m,
        noise=noise,
        generator=torch.Generator().manual_seed(0),
    )
    reported = summarize(
        result.log_prob,
        result.per_probe,
        (3,),
        LikelihoodSection(estimator="hutchinson", probes=m, noise=noise),
    )
    assert reported["probes"] == m
    assert reported["nll_std_error"] == pytest.approx(math.sqrt(variance / (m * n)), rel=0.04)
    spread = result.per_probe.var(dim=1)  # (n,): each point's probes, unbiased
    assert reported["nll_std_error"] == pytest.approx(math.sqrt(float(spread.sum()) / m) / n, rel=1e-12)


def fixed_points(pipeline):
    return pipeline.dataset.sample(200, generator=torch.Generator().manual_seed(99))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("simulator", "order"),
    [(EulerSimulator(), 1.0), (HeunSimulator(), 2.0), (MidpointSimulator(), 2.0), (RK4Simulator(), 4.0)],
    ids=["euler", "heun", "midpoint", "rk4"],
)
def test_fixed_step_likelihood_converges_with_the_solvers_order(simulator, order):
    """Differences of successive halvings, ``|L(n) - L(2n)| ~ n^-order``, on the asymmetric mixture's
    exact velocity. RK4 is still pre-asymptotic here, hence a band of 0.3 around its order
    (benchmarks/reference/test-notes.md)."""
    pipeline = oracle("data.preset=asymmetric")
    x = pipeline.dataset.sample(50, generator=torch.Generator().manual_seed(3)).double()
    steps = [16, 32, 64, 128, 256] if order == 4 else [32, 64, 128, 256, 512]
    t_lo, t_hi = pipeline.path.t_range
    values = [
        log_likelihood(
            pipeline.sample.dynamics,
            simulator,
            pipeline.path.prior_log_prob,
            x,
            torch.linspace(t_lo, t_hi, n + 1, dtype=torch.float64),
        ).log_prob
        for n in steps
    ]
    differences = [float((a - b).abs().mean()) for a, b in itertools.pairwise(values)]
    slope = np.polyfit(np.log(1.0 / np.array(steps[:-1])), np.log(differences), 1)[0]
    assert abs(slope - order) < 0.3, (slope, differences)


@pytest.mark.parametrize("schedule", ["vp", "ot"])
def test_a_score_model_is_integrated_through_its_probability_flow_ode(schedule):
    """Only the oracle's score, converted to the velocity by the Gaussian path: the probability-flow
    ODE of the score's SDE has the mixture's marginals, so its likelihood is the mixture's density."""
    pipeline = oracle(f"path.schedule.kind={schedule}")
    score = OracleScore(pipeline.model)
    flow = FlowODE(velocity=pipeline.path.velocity_from_score(score))
    x = pipeline.dataset.sample(200, generator=torch.Generator().manual_seed(5)).double()
    exact = pipeline.dataset.log_prob(x).double()
    ts = torch.tensor(pipeline.path.t_range, dtype=torch.float64)
    result = log_likelihood(flow, Dopri5Simulator(), pipeline.path.prior_log_prob, x, ts)
    assert abs(float((result.log_prob - exact).mean())) < 1e-4
    assert float((result.log_prob - exact).abs().max()) < 5e-3


# --- dequantisation ------------------------------------------------------------------------------


def test_dequantised_bits_per_dim_match_the_discrete_probabilities():
    """Data of N(0, 0.25^2 I) on 256 levels in [-1, 1], and the oracle of that single Gaussian: the
    dequantised bound equals -log2 of the exact probability of each data bin, per dimension, up to
    the bound's Jensen gap (~1e-5 bits here)."""
    sigma, bins = 0.25, 256
    pipeline = load_pipeline(
        {
            "data": {"kind": "gaussian-mixture", "means": [[0.0, 0.0]], "stds": [sigma]},
            "path": {"kind": "gaussian", "schedule": "ot"},
            "model": {"kind": "mixture-oracle"},
            "evaluate": {"likelihood": {"n": 10, "dequantize": {"bins": bins}}},
        }
    ).pipeline
    draws = torch.randn(3000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma
    draws = draws[(draws.abs() < 1).all(dim=1)][:1500]
    levels = torch.floor((draws + 1) / 2 * bins).clamp(0, bins - 1)  # the bin of each draw
    data = (levels / (bins - 1) * 2 - 1).float()  # the bins' levels, as k / 127.5 - 1 for 8-bit images
    report = evaluate_likelihood(pipeline, pipeline.evaluate.likelihood, data=data)
    width = 2.0 / bins
    lower = -1 + levels.numpy() * width
    mass = stats.norm(scale=sigma).cdf(lower + width) - stats.norm(scale=sigma).cdf(lower)
    exact_bits = -np.log2(mass).sum(axis=1).mean() / 2
    assert report.metrics["bits_per_dim"] == pytest.approx(exact_bits, abs=2e-3), report.metrics
    assert "exact_nll" not in report.metrics  # the data's density is not that of dequantised data
    # bits per dim count the bin width: nll of the dequantised points + D log(K / 2), per D log 2
    nll = report.metrics["nll"]
    assert report.metrics["bits_per_dim"] == pytest.approx((nll + 2 * math.log(bins / 2)) / (2 * math.log(2)))


def test_data_off_the_levels_are_refused_naming_the_setting():
    pipeline = load_pipeline(
        {
            "data": {"kind": "gaussian-mixture", "means": [[0.0, 0.0]], "stds": [0.3]},
            "path": {"kind": "gaussian", "schedule": "ot"},
            "model": {"kind": "mixture-oracle"},
            "evaluate": {"likelihood": {"n": 10, "dequantize": {"bins": 256}}},
        }
    ).pipeline
    with pytest.raises(FlowkitError) as error:
        evaluate_likelihood(pipeline, pipeline.evaluate.likelihood, source="held-out data")
    assert str(error.value).startswith(
        "held-out data: 10 of 10 points have values that are not on the 256 levels from -1.0 to 1.0 "
        "of [evaluate] likelihood.dequantize"
    )


def test_dequantize_high_must_be_above_low():
    with pytest.raises(ValueError, match=r"high = -2.0 must be above low = -1.0"):
        DequantizeSection(high=-2.0)


# --- in a pipeline --------------------------------------------------------------------------------


def test_an_sde_is_refused_when_the_pipeline_is_built():
    with pytest.raises(CapabilityError) as error:
        build_pipeline(ORACLE, ['evaluate.likelihood={ dynamics = "extension-sde" }'])
    assert str(error.value) == (
        f"{ORACLE}: [evaluate] likelihood: dynamics 'extension-sde' is an SDE, which has no "
        'change-of-variables likelihood; use the probability-flow ODE, dynamics = "flow"'
    )
    with pytest.raises(CapabilityError, match="has no change-of-variables likelihood"):
        log_likelihood(
            ExtensionSDE(),
            RK4Simulator(),
            GaussianPath().prior_log_prob,
            torch.zeros(2, 2),
            torch.linspace(0, 1, 3),
        )


def test_a_misspelled_setting_names_the_key():
    with pytest.raises(ConfigError) as error:
        build_pipeline(ORACLE, ['evaluate.likelihood={ estimater = "exact" }'])
    assert str(error.value) == (
        f"{ORACLE}: [evaluate.likelihood] key 'estimater' (from --set): unknown key. Did you mean "
        "'estimator'? "
        "Valid keys: estimator, probes, noise, simulator, steps, grid, dynamics, n, batch_size, dequantize"
    )


def test_likelihood_is_off_by_default():
    assert oracle().evaluate.likelihood is None


# --- a run and `flowkit likelihood` -----------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    """A finished run of examples/oracle-ode.toml, small, with [evaluate] likelihood on."""
    from flowkit.engine import run_pipeline
    from flowkit.testing import make_manager

    manager = make_manager(warn=False)
    overrides = [
        "sample.n=300",
        "sample.steps=10",
        "sample.trajectories=0",
        "evaluate.n=300",
        "evaluate.floor_repeats=1",
        "evaluate.likelihood={ n = 300 }",
    ]
    out = tmp_path_factory.mktemp("likelihood") / "run"
    run_pipeline(build_pipeline(ORACLE, overrides, manager), manager, out=str(out), quiet=True)
    return out


def cli(*args):
    from click.testing import CliRunner

    from flowkit.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_run_reports_the_likelihood_in_its_metrics(oracle_run):
    metrics = json.loads((oracle_run / "metrics.json").read_text())
    assert metrics["likelihood_nfe"] == 60 and metrics["likelihood_n"] == 300
    assert metrics["likelihood_estimator"] == "exact" and metrics["likelihood_seconds"] >= 0
    assert abs(metrics["nll_gap"]) < 1e-3 and metrics["nll_gap"] == metrics["nll"] - metrics["exact_nll"]
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (2 * math.log(2)))
    assert "nll_std_error" not in metrics
    assert "[evaluate.likelihood]" in (oracle_run / "pipeline.toml").read_text()


def test_the_command_reproduces_the_runs_value_bit_for_bit(oracle_run):
    metrics = json.loads((oracle_run / "metrics.json").read_text())
    result = cli("likelihood", oracle_run, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["nll"] == metrics["nll"] and printed["bits_per_dim"] == metrics["bits_per_dim"]
    assert printed["nfe"] == 60 and printed["n"] == 300 and printed["exact_nll"] == metrics["exact_nll"]
    human = cli("likelihood", oracle_run, "--n", 20)
    assert human.exit_code == 0, human.output
    assert human.stdout.startswith("nll = ") and ", n = 20, nfe = 60 (exact " in human.stdout


def test_hutchinson_through_the_command_reports_its_standard_error(oracle_run):
    result = cli(
        "likelihood",
        oracle_run,
        "--json",
        "--n",
        100,
        "--set",
        "estimator=hutchinson",
        "--set",
        "evaluate.likelihood.probes=2",
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["estimator"] == "hutchinson" and printed["probes"] == 2
    assert printed["n"] == 100 and 0 < printed["nll_std_error"] < 0.2


def test_save_writes_per_point_values_and_never_overwrites(oracle_run, tmp_path):
    target = tmp_path / "loglik.npy"
    result = cli("likelihood", oracle_run, "--json", "--save", target)
    assert result.exit_code == 0, result.output
    values = np.load(target)
    assert values.shape == (300,) and values.dtype == np.float64
    assert -values.mean() == pytest.approx(json.loads(result.stdout.splitlines()[0])["nll"], rel=1e-12)
    before = target.read_bytes()
    again = cli("likelihood", oracle_run, "--save", target)
    assert again.exit_code == 1
    assert again.stderr == (
        f"Error: --save {target}: the file exists; choose another name (it is never overwritten)\n"
    )
    assert target.read_bytes() == before


def test_given_data_is_used_with_the_datasets_exact_density(oracle_run, tmp_path):
    points = np.array([[3.0, 0.0], [0.0, 3.0], [2.1, 2.1]], dtype=np.float32)
    np.save(tmp_path / "points.npy", points)
    saved = tmp_path / "points-loglik.npy"
    result = cli("likelihood", oracle_run, "--data", tmp_path / "points.npy", "--json", "--save", saved)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["n"] == 3 and abs(printed["nll_gap"]) < 1e-2
    pipeline = load_pipeline(oracle_run / "pipeline.toml").pipeline
    exact = pipeline.dataset.log_prob(torch.from_numpy(points).double()).numpy()
    np.testing.assert_allclose(np.load(saved), exact, atol=2e-2)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (
            np.zeros((4, 3), dtype=np.float32),
            "expected an array of shape (N, 2) (the run's data shape), found (4, 3)",
        ),
        (np.zeros((4, 2), dtype=np.int64), "expected floating-point values, found dtype int64"),
        (
            np.array([[0.0, 1.0], [np.nan, 0.0], [np.inf, 1.0]]),
            "2 rows hold non-finite values (NaN or inf), the first is row 1",
        ),
    ],
    ids=["shape", "dtype", "non-finite"],
)
def test_bad_data_is_refused_with_a_clear_message(oracle_run, tmp_path, array, message):
    file = tmp_path / "bad.npy"
    np.save(file, array)
    result = cli("likelihood", oracle_run, "--data", file)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: --data {file}: {message}")
    assert "Traceback" not in result.output


def test_bad_settings_and_directories_are_refused(oracle_run, tmp_path):
    sde = cli("likelihood", oracle_run, "--set", "dynamics=extension-sde")
    assert sde.exit_code == 1 and "dynamics 'extension-sde' is an SDE" in sde.stderr
    typo = cli("likelihood", oracle_run, "--set", "stpes=3")
    assert typo.exit_code == 1
    assert typo.stderr == (
        f"Error: {oracle_run / 'pipeline.toml'}: [evaluate.likelihood] key 'stpes' (from --set): unknown "
        "key. Did you mean 'steps'? Valid keys: estimator, probes, noise, simulator, steps, grid, "
        "dynamics, n, batch_size, dequantize\n"
    )
    missing = cli("likelihood", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "no such run directory" in missing.stderr
    nodata = cli("likelihood", oracle_run, "--data", tmp_path / "none.npy")
    assert nodata.exit_code == 1 and nodata.stderr == f"Error: --data {tmp_path / 'none.npy'}: no such file\n"


def test_a_score_trained_network_gets_the_velocity_converted_from_its_score():
    """A dsm-trained network provides only a score; [evaluate] likelihood integrates the
    probability-flow ODE, u = alpha'/alpha (x + beta^2 s) - beta' beta s, written out here."""
    loaded = load_pipeline(
        {
            "data": {"kind": "moons"},
            "path": {"kind": "gaussian", "schedule": "vp"},
            "model": {"kind": "mlp", "hidden": [32, 32]},
            "loss": {"kind": "dsm"},
            "train": {"steps": 30, "batch_size": 64},
            "evaluate": {"likelihood": {"n": 64}},
        }
    )
    loaded.train()
    pipeline = loaded.pipeline
    assert set(pipeline.context.roles) >= {"score"} and pipeline.loss.trains == "score"
    score, schedule = pipeline.context.roles["score"], pipeline.path.schedule
    report = evaluate_likelihood(pipeline, pipeline.evaluate.likelihood)

    def probability_flow(x, t):
        alpha, beta = schedule.alpha(t)[:, None], schedule.beta(t)[:, None]
        d_alpha, d_beta = schedule.d_alpha(t)[:, None], schedule.d_beta(t)[:, None]
        s = score(x, t)
        return d_alpha / alpha * (x + beta * beta * s) - d_beta * beta * s

    t_lo, t_hi = pipeline.path.t_range
    by_hand = log_likelihood(
        FlowODE(velocity=probability_flow),
        RK4Simulator(),
        pipeline.path.prior_log_prob,
        load_heldout(pipeline, 64),
        torch.linspace(t_lo, t_hi, 16),
    )
    assert report.metrics["nfe"] == 60 and math.isfinite(report.metrics["nll"])
    difference = float((report.log_prob - by_hand.log_prob.double()).abs().max())
    assert difference < 1e-4


def test_a_non_finite_likelihood_is_an_error_not_a_number():
    pipeline = oracle("evaluate.likelihood={}")
    far = torch.full((2, 2), 1e25)  # its prior log-density overflows float32
    with pytest.raises(FlowkitError) as error:
        evaluate_likelihood(pipeline, pipeline.evaluate.likelihood, data=far, source="far.npy")
    assert str(error.value).startswith("far.npy: the log-likelihood of 2 of 2 points is not finite")


def test_the_human_readable_line_shows_the_error_bar_and_the_saved_file(oracle_run, tmp_path):
    target = tmp_path / "h.npy"
    result = cli(
        "likelihood",
        oracle_run,
        "--n",
        50,
        "--set",
        "estimator=hutchinson",
        "--set",
        "probes=2",
        "--save",
        target,
    )
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert first.startswith("nll = ") and " nats ± " in first and ", n = 50, nfe = 60 (exact " in first
    assert second == f"wrote {target}" and np.load(target).shape == (50,)
