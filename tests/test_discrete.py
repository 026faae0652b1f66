"""Discrete flow matching (plugins/flowkit_discrete, docs/math.md "Discrete flow matching"): the mixture
path's CTMC rates against finite differences of its marginals, the losses against their closed forms
(and flow_matching's), the discrete Euler sampler against flow_matching's MixtureDiscreteEulerSolver on
the same network and seed, the total variation, the datasets, and the refusals of bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from flowkit_discrete.data import CheckerboardGrid, DigitTokens, TokenFile
from flowkit_discrete.losses import CrossEntropyLoss, GeneralizedKLLoss, Posterior
from flowkit_discrete.metrics import TotalVariation
from flowkit_discrete.nets import TokenMLP
from flowkit_discrete.path import MixturePath
from flowkit_discrete.sampler import CTMCDynamics, DiscreteEuler

from flowkit.engine import build_pipeline
from flowkit.errors import CapabilityError, FlowkitError
from flowkit.testing import make_manager

V, L = 3, 2  # a small joint law over 3^2 sequences, enumerable exactly


def joint_law() -> dict[tuple[int, ...], float]:
    """A data law over sequences of L tokens of V values with correlated tokens."""
    weights = torch.arange(1, V**L + 1, dtype=torch.float64) ** 1.5
    weights /= weights.sum()
    return {z: float(w) for z, w in zip(itertools.product(range(V), repeat=L), weights, strict=True)}


def source_law(path: MixturePath) -> list[float]:
    """``p_0`` of one token over the path's states."""
    if path.mask_token is not None:
        return [0.0] * V + [1.0]
    return [1.0 / V] * V


def marginal(path: MixturePath, data: dict, t: float) -> dict[tuple[int, ...], float]:
    """``p_t(x) = sum_z p(z) prod_i (kappa delta_{z_i}(x_i) + (1 - kappa) p_0(x_i))``, exactly."""
    kappa = t**path.params.exponent
    p0 = source_law(path)
    law = {}
    for x in itertools.product(range(path.states), repeat=L):
        law[x] = sum(
            pz * math.prod(kappa * (zi == xi) + (1 - kappa) * p0[xi] for zi, xi in zip(z, x, strict=True))
            for z, pz in data.items()
        )
    return law


def exact_posterior(path: MixturePath, data: dict, t: float, x: tuple[int, ...]) -> torch.Tensor:
    """``p_{1|t}(z_i = v | x)`` for each token ``i``: ``(L, V)``."""
    kappa = t**path.params.exponent
    p0 = source_law(path)
    post = torch.zeros(L, V, dtype=torch.float64)
    for z, pz in data.items():
        w = pz * math.prod(kappa * (zi == xi) + (1 - kappa) * p0[xi] for zi, xi in zip(z, x, strict=True))
        for i in range(L):
            post[i, z[i]] += w
    return post / post.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_the_rates_move_the_marginals_as_their_finite_differences(source, exponent):
    # Kolmogorov's forward equation d/dt p_t(x') = sum_x p_t(x) u_t(x' | x), with u the path's marginal
    # rates (one token jumping at a time) from the exact posterior. Catches a wrong jump coefficient
    # (kappa'/kappa, a missing 1 - kappa) or a rate left on the diagonal.
    path = MixturePath(MixturePath.Params(source=source, exponent=exponent), vocabulary=V)
    data, t, h = joint_law(), 0.4, 1e-5
    states = list(itertools.product(range(path.states), repeat=L))
    now = marginal(path, data, t)
    change = {x: 0.0 for x in states}
    for x in states:
        posterior = exact_posterior(path, data, t, x)[None]
        rates = path.rates(posterior, torch.tensor([x]), torch.tensor([t], dtype=torch.float64))[0]
        for i, y in itertools.product(range(L), range(V)):
            rate = float(rates[i, y])
            if y == x[i]:
                assert rate == 0.0
                continue
            target = (*x[:i], y, *x[i + 1 :])
            change[target] += now[x] * rate
            change[x] -= now[x] * rate
    ahead, behind = marginal(path, data, t + h), marginal(path, data, t - h)
    for x in states:
        assert change[x] == pytest.approx((ahead[x] - behind[x]) / (2 * h), rel=1e-6, abs=1e-9), x


def test_the_path_keeps_each_token_with_probability_kappa():
    path = MixturePath(MixturePath.Params(source="mask", exponent=2.0), vocabulary=5)
    z = torch.randint(0, 5, (4000, 8), generator=torch.Generator().manual_seed(0))
    t = torch.full((4000,), 0.6)
    x = path.sample(z, t, generator=torch.Generator().manual_seed(1))
    kept = (x == z).double().mean()
    assert set(x.unique().tolist()) <= {0, 1, 2, 3, 4, 5}
    assert bool(((x == z) | (x == 5)).all())  # a token is the data's or masked
    assert abs(float(kept) - 0.36) < 4 * math.sqrt(0.36 * 0.64 / z.numel())


def small_network(states: int, vocabulary: int, length: int = 3, seed: int = 0) -> TokenMLP:
    torch.manual_seed(seed)
    return TokenMLP(
        TokenMLP.Params(hidden=[32, 32], embedding=4, time_features=2),
        data_shape=(length,),
        output_shape=(length, vocabulary),
        states=states,
    )


def loss_inputs(source: str, seed: int = 0):
    path = MixturePath(MixturePath.Params(source=source, exponent=1.5), vocabulary=4)
    generator = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 4, (64, 3), generator=generator)
    t = torch.rand(64, generator=generator, dtype=torch.float64) * 0.99
    x = path.sample(z, t, generator=generator)
    logits = torch.randn(64, 3, 4, generator=generator, dtype=torch.float64)
    return path, z, x, t, torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_generalized_kl_is_the_bregman_divergence_of_the_rates(source):
    # D(u_cond, u_model) = sum_{y != x_t} u_model(y) - u_cond(y) + u_cond(y) log(u_cond(y) / u_model(y)),
    # with u_cond(y) = c delta_z(y) (0 where z = x_t) and u_model(y) = c p_{1|t}(y | x_t), summed by hand.
    path, z, x, t, log_p = loss_inputs(source)
    loss = GeneralizedKLLoss(vocabulary=4).objective(log_p, z, x, t, path)
    c = path.jump_coefficient(t)
    total = 0.0
    for b, i in itertools.product(range(z.shape[0]), range(z.shape[1])):
        for y in range(4):
            if y == int(x[b, i]):
                continue
            model = float(c[b] * log_p[b, i, y].exp())
            cond = float(c[b]) if y == int(z[b, i]) else 0.0
            total += model - cond + (cond * math.log(cond / model) if cond > 0 else 0.0)
    assert float(loss) == pytest.approx(total / z.numel(), rel=1e-10)


def test_generalized_kl_matches_flow_matchings():
    fm_path = pytest.importorskip("flow_matching.path")
    from flow_matching.loss import MixturePathGeneralizedKL
    from flow_matching.path.scheduler import PolynomialConvexScheduler

    path, z, x, t, log_p = loss_inputs("uniform", seed=3)
    theirs = MixturePathGeneralizedKL(fm_path.MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1.5)))
    expected = theirs(log_p, z, x, t)
    assert float(GeneralizedKLLoss(vocabulary=4).objective(log_p, z, x, t, path)) == pytest.approx(
        float(expected), rel=1e-12
    )


def test_cross_entropy_is_torchs_on_the_posterior():
    path, z, x, t, log_p = loss_inputs("mask")
    loss = CrossEntropyLoss(vocabulary=4).objective(log_p, z, x, t, path)
    expected = torch.nn.functional.cross_entropy(log_p.reshape(-1, 4), z.reshape(-1))
    assert float(loss) == float(expected)


@pytest.mark.parametrize("loss_cls", [CrossEntropyLoss, GeneralizedKLLoss])
def test_a_loss_trains_a_network_through_its_posterior_role(loss_cls):
    path = MixturePath(MixturePath.Params(source="uniform"), vocabulary=4)
    loss = loss_cls(vocabulary=4)
    network = small_network(path.states, 4)
    z = torch.randint(0, 4, (32, 3), generator=torch.Generator().manual_seed(0))
    value = loss(loss.model_role(network, path), path, z, generator=torch.Generator().manual_seed(1))
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert all(p.grad is not None for p in network.parameters())
    assert loss.output_shape((3,)) == (3, 4)


class FlowMatchingModel:
    """flow_matching's view of a flowkit posterior: probabilities over ``states`` values (a zero column
    for the mask, which the model never predicts)."""

    def __init__(self, posterior, states: int):
        from flow_matching.utils import ModelWrapper

        outer = self

        class Wrapped(ModelWrapper):
            def forward(self, x, t, **extras):
                p = outer.posterior(x, t).exp()
                pad = outer.states - p.shape[-1]
                return torch.nn.functional.pad(p, (0, pad)) if pad else p

        self.posterior, self.states = posterior, states
        self.model = Wrapped(torch.nn.Identity())


def deterministic_one_hot_draw(categorical):
    """flow_matching's ``categorical``, except that a row with one nonzero weight gives that value
    without a random draw, and that a last column of zero weight everywhere (the mask, which the
    model never predicts) is left out of the draw: the same law, and the same random stream as a
    sampler that neither draws what is certain nor offers the mask."""

    def draw(probs):
        if bool(((probs > 0).sum(dim=-1) == 1).all()):
            return probs.argmax(dim=-1)
        if bool((probs[..., -1] == 0).all()):
            probs = probs[..., :-1]
        return categorical(probs)

    return draw


@pytest.mark.parametrize("source", ["mask", "uniform"])
@pytest.mark.parametrize("steps", [1, 8])
def test_the_sampler_is_flow_matchings_mixture_euler_solver(source, steps, monkeypatch):
    # Same network, same seed: bitwise the same tokens. Catches a wrong jump probability, a jump to the
    # current value, a last step that does not draw x_1, or draws in another order.
    pytest.importorskip("flow_matching")
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver, discrete_solver

    path = MixturePath(MixturePath.Params(source=source, exponent=2.0), vocabulary=5)
    network = small_network(path.states, 5, length=6)
    posterior = Posterior(network)
    dynamics = CTMCDynamics(posterior=posterior, path=path)
    x0 = path.sample_prior((200, 6), generator=torch.Generator().manual_seed(7))
    ts = torch.linspace(0.0, 0.999, steps + 1)
    with torch.no_grad():
        ours = DiscreteEuler().simulate(dynamics, x0, ts, generator=torch.Generator().manual_seed(11))
        monkeypatch.setattr(
            discrete_solver, "categorical", deterministic_one_hot_draw(discrete_solver.categorical)
        )
        solver = MixtureDiscreteEulerSolver(
            FlowMatchingModel(posterior, path.states).model,
            MixtureDiscreteProbPath(PolynomialConvexScheduler(n=2.0)),
            vocabulary_size=path.states,
        )
        torch.manual_seed(11)
        theirs = solver.sample(x0.clone(), step_size=None, time_grid=ts)
    assert torch.equal(ours, theirs)
    assert ours.dtype == torch.long and int(ours.max()) < 5  # no mask left
    if steps > 1:
        assert not torch.equal(ours, x0)


def test_the_sampler_counts_one_evaluation_per_step_and_keeps_the_trajectory():
    path = MixturePath(MixturePath.Params(source="mask"), vocabulary=5)
    dynamics = CTMCDynamics(posterior=Posterior(small_network(path.states, 5)), path=path)
    sampler = DiscreteEuler()
    x0 = path.sample_prior((10, 3))
    with torch.no_grad():
        trajectory = sampler.simulate_trajectory(dynamics, x0, torch.linspace(0, 0.999, 5), torch.Generator())
    assert sampler.last_nfe == 4 and trajectory.shape == (5, 10, 3)
    assert torch.equal(trajectory[0], x0) and int(trajectory[-1].max()) < 5


def test_an_unnormalised_posterior_scales_the_rate_of_jumping():
    # A guided posterior need not sum to one: its mass S scales the rates c q(y). With q = 0 everywhere
    # but a tiny mass, almost nothing jumps; with the same q treated as normalised, the jumps happen.
    path = MixturePath(MixturePath.Params(source="uniform"), vocabulary=4)

    def faint(x, t):
        return torch.full((*x.shape, 4), math.log(1e-6))

    x0 = torch.zeros(500, 2, dtype=torch.long)
    ts = torch.tensor([0.0, 0.5, 0.999])
    runs = {}
    for normalised in (True, False):
        dynamics = CTMCDynamics(posterior=faint, path=path, normalised=normalised)
        trajectory = DiscreteEuler().simulate_trajectory(dynamics, x0, ts, torch.Generator().manual_seed(0))
        runs[normalised] = float((trajectory[1] != x0).double().mean())
    assert runs[False] == 0.0 and runs[True] > 0.2


def test_total_variation_of_known_laws():
    tv = TotalVariation()
    a = torch.tensor([[0, 1], [0, 1], [1, 1], [2, 0]])
    b = torch.tensor([[0, 1], [1, 1], [1, 1], [1, 1]])
    assert tv(a, a) == 0.0
    assert tv(a, b) == pytest.approx(0.5 * (0.25 + 0.5 + 0.25))  # (0,1): 1/2 vs 1/4; (1,1); (2,0)
    assert tv(a, a + 5) == 1.0
    marginals = TotalVariation(TotalVariation.Params(over="marginals"))
    # token 0: {0: 1/2, 1: 1/4, 2: 1/4} vs {0: 1/4, 1: 3/4}: 1/2; token 1: {1: 3/4, 0: 1/4} vs {1: 1}: 1/4
    assert marginals(a.float(), b.float()) == pytest.approx((0.5 + 0.25) / 2)
    with pytest.raises(
        CapabilityError, match="compares categorical tokens, but the samples hold non-integer"
    ):
        tv(a.float() + 0.5, b)


def test_the_checkerboard_grid_draws_only_dark_cells_uniformly():
    data = CheckerboardGrid(CheckerboardGrid.Params(cells=8, squares=4))
    x = data.sample(16000, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.long and data.shape == (2,) and data.vocabulary == 8
    assert bool(data.is_dark(x).all()) and len(data.dark_cells) == 32
    counts = torch.bincount(x[:, 0] * 8 + x[:, 1], minlength=64)
    dark = counts[counts > 0]
    assert len(dark) == 32 and float(dark.min()) > 0.8 * 500 and float(dark.max()) < 1.2 * 500
    assert data.is_dark(torch.tensor([[0, 0], [0, 2], [2, 0], [-1, 0], [8, 0]])).tolist() == [
        True, False, False, False, False,
    ]  # fmt: skip


def test_the_digits_are_64_tokens_of_17_levels_with_labels_in_the_images_layout():
    pytest.importorskip("sklearn")
    data = DigitTokens()
    x, y = data.sample_labelled(50, generator=torch.Generator().manual_seed(0))
    assert data.shape == (1, 8, 8) and data.vocabulary == 17 and data.num_classes == 10
    assert x.dtype == torch.long and int(x.min()) >= 0 and int(x.max()) <= 16 and y.shape == (50,)
    held = data.held_out()
    assert held is not None and held[0].shape == (359, 1, 8, 8)


def test_a_token_file_is_read_and_checked(tmp_path):
    good = tmp_path / "tokens.npy"
    np.save(good, np.array([[0, 1, 2], [2, 1, 0]] * 5))
    data = TokenFile(TokenFile.Params(path=str(good), vocabulary=3, held_out=0.0))
    assert data.shape == (3,) and data.sample(4).dtype == torch.long
    np.save(tmp_path / "big.npy", np.array([[0, 7]]))
    with pytest.raises(
        FlowkitError, match=r"token 7 is outside 0 \.\. 2 \(vocabulary = 3\); raise vocabulary"
    ):
        TokenFile(TokenFile.Params(path=str(tmp_path / "big.npy"), vocabulary=3))
    np.save(tmp_path / "float.npy", np.array([[0.5, 1.0]]))
    with pytest.raises(FlowkitError, match="holds float64 values; categorical data must be integers"):
        TokenFile(TokenFile.Params(path=str(tmp_path / "float.npy"), vocabulary=3))
    with pytest.raises(FlowkitError, match=r"is not an existing \.npy file"):
        TokenFile(TokenFile.Params(path=str(tmp_path / "missing.npy"), vocabulary=3))


def pipeline(**tables):
    base = {
        "run": {"device": "cpu"},
        "data": {"kind": "checkerboard-grid", "cells": 8},
        "path": {"kind": "mixture"},
        "model": {"kind": "token-mlp", "hidden": [16]},
        "loss": {"kind": "cross-entropy"},
        "train": {"steps": 2, "batch_size": 8},
        "sample": {"dynamics": "ctmc", "simulator": "discrete-euler", "steps": 4, "n": 16},
        "evaluate": {"metric": "total-variation", "n": 16},
    }
    base.update(tables)
    return base


@pytest.fixture(scope="module")
def manager():
    return make_manager()


def test_a_discrete_pipeline_builds(manager):
    pipe = build_pipeline(pipeline(), (), manager)
    assert pipe.context.output_shape == (2, 8)
    assert pipe.model.states == 9  # type: ignore[attr-defined]  # eight cells and the mask


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"data": {"kind": "moons"}},
            "<dict>: [path] (path 'mixture'): path 'mixture' needs categorical data (a dataset with a "
            "vocabulary of tokens), but dataset 'moons' has none; use e.g. [data] kind = "
            '"checkerboard-grid", "digits-tokens" or "tokens"',
        ),
        (
            {"path": {"kind": "gaussian"}},
            "<dict>: [loss]: loss 'cross-entropy' trains the posterior of a discrete mixture path, but path "
            "'gaussian' is not one; use [path] kind = \"mixture\"",
        ),
        (
            {"sample": {"dynamics": "flow", "simulator": "euler"}},
            "needs a velocity, but the model provides posterior",
        ),
        (
            {"sample": {"dynamics": "ctmc", "simulator": "euler"}},
            "<dict>: [sample]: dynamics 'ctmc' is a jump process, which simulator 'euler' cannot integrate "
            '(it follows a drift); use simulator = "discrete-euler"',
        ),
    ],
)
def test_a_bad_discrete_pipeline_is_refused_in_one_line(manager, tables, message):
    with pytest.raises(FlowkitError) as caught:
        build_pipeline(pipeline(**tables), (), manager)
    text = str(caught.value)
    assert message in text and "\n" not in text
