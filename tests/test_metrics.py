"""Metrics: exact W2 (brute force, invariances, Gaussian shift), sliced W2, energy distance."""

from __future__ import annotations

import itertools
import math

import flowkit_metrics
import pytest
import torch
from flowkit_metrics.distances import W2, Energy, SlicedW2

from flowkit.errors import FlowkitError
from flowkit.testing import check_component


def gaussian(n, dim=2, shift=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=generator, dtype=torch.float64) + shift


def test_registers_every_metric():
    added = {}

    class Recorder:
        def add(self, kind, name, cls):
            added[(kind, name)] = cls

    flowkit_metrics.flowkit_register(Recorder())
    from flowkit_metrics.fid import FID, KID

    assert added == {
        ("metric", "w2"): W2,
        ("metric", "sliced-w2"): SlicedW2,
        ("metric", "energy"): Energy,
        ("metric", "fid"): FID,
        ("metric", "kid"): KID,
    }
    for cls in added.values():
        check_component("metric", cls)


# --------------------------------------------------------------------------------------------------
# Exact W2
# --------------------------------------------------------------------------------------------------


def test_w2_matches_brute_force_over_all_permutations():
    x, y = gaussian(6, seed=1), gaussian(6, shift=0.3, seed=2)
    cost = torch.cdist(x, y) ** 2
    best = min(sum(cost[i, j].item() for i, j in enumerate(p)) for p in itertools.permutations(range(6)))
    assert W2()(x, y) == pytest.approx(math.sqrt(best / 6), rel=1e-12)


def test_w2_of_identical_sets_is_zero():
    x = gaussian(500)
    assert W2()(x, x) == 0.0
    assert W2()(x, x[torch.randperm(500, generator=torch.Generator().manual_seed(0))]) == 0.0
    # Above max_points both sets are subsampled with the same seed, so they stay identical.
    assert W2(W2.Params(max_points=100))(x, x) == 0.0


def test_w2_is_scale_equivariant_and_translation_invariant():
    x, y = gaussian(400, seed=1), gaussian(400, shift=0.5, seed=2)
    base = W2()(x, y)
    assert W2()(3.0 * x, 3.0 * y) == pytest.approx(3.0 * base, rel=1e-10)
    assert W2()(x + 7.0, y + 7.0) == pytest.approx(base, rel=1e-10)


def test_w2_splits_into_mean_shift_and_centred_part():
    # For any coupling E|X - Y|^2 = |mx - my|^2 + E|(X - mx) - (Y - my)|^2, so W2 >= |mx - my|.
    x, y = gaussian(400, seed=3), gaussian(400, shift=1.0, seed=4)
    shift2 = ((x.mean(0) - y.mean(0)) ** 2).sum().item()
    centred = W2()(x - x.mean(0), y - y.mean(0))
    assert W2()(x, y) ** 2 == pytest.approx(shift2 + centred**2, rel=1e-10)


@pytest.mark.slow
def test_w2_between_shifted_gaussians_is_the_shift():
    # N(0, I) vs N(m, I): W2 = |m| = 2. With n = 2000 the sample means differ from m by N(0, 2/n I)
    # (sd 0.032 along m), and the centred parts add W2^2 of two samples of one Gaussian (about 0.02
    # at this n, +0.005 on W2). A tolerance of 0.1 is three standard deviations plus the bias.
    m = torch.tensor([2.0, 0.0], dtype=torch.float64)
    distance = W2()(gaussian(2000, seed=5), gaussian(2000, seed=6) + m)
    assert distance == pytest.approx(2.0, abs=0.1)
    null = W2()(gaussian(1000, seed=5), gaussian(1000, seed=6))
    assert 0.1 < null < 0.3  # the positive finite-sample bias: 0.19 at n = 1000, 0.15 at n = 2000


def test_w2_subsamples_unequal_sets_deterministically():
    x, y = gaussian(700, seed=1), gaussian(300, shift=0.2, seed=2)
    first = W2()(x, y)
    assert first == W2()(x, y)
    assert W2(W2.Params(seed=1))(x, y) != first
    limited = W2(W2.Params(max_points=50))
    assert limited(x, y) == limited(x, y)


# --------------------------------------------------------------------------------------------------
# Sliced W2
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_sliced_w2_never_exceeds_w2(seed):
    x, y = gaussian(300, dim=3, seed=seed), 1.5 * gaussian(300, dim=3, shift=0.4, seed=seed + 10)
    assert SlicedW2()(x, y) <= W2()(x, y) + 1e-12


def test_sliced_w2_equals_w2_in_one_dimension():
    x, y = gaussian(300, dim=1, seed=1), gaussian(300, dim=1, shift=0.7, seed=2)
    assert SlicedW2(SlicedW2.Params(num_projections=3))(x, y) == pytest.approx(W2()(x, y), rel=1e-12)


def test_sliced_w2_of_two_points_is_the_mean_projected_shift():
    metric = SlicedW2(SlicedW2.Params(num_projections=64, seed=3))
    m = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    directions = torch.from_numpy(metric.directions(3))
    assert torch.allclose(directions.norm(dim=0), torch.ones(64, dtype=torch.float64))
    expected = math.sqrt(((m @ directions) ** 2).mean().item())
    assert metric(torch.zeros(1, 3), m) == pytest.approx(expected, rel=1e-6)


def test_sliced_w2_of_unequal_sets_integrates_the_quantile_functions():
    # x = {0, 1}, y = {0, 1/2, 1}: the quantile functions differ by 1/2 on (1/3, 2/3), so W2^2 = 1/12.
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [0.5], [1.0]])
    assert SlicedW2()(x, y) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    doubled = torch.cat([y, y])  # the same empirical distribution
    assert SlicedW2()(doubled, y) == 0.0


def test_sliced_w2_of_a_shift_is_the_shift_over_sqrt_dim():
    # E_theta (theta . m)^2 = |m|^2 / d for theta uniform on the sphere; with 1000 directions the
    # Monte Carlo error of the square is 1.1% (sd of cos^2 is 0.35 in 2D, / sqrt(1000)), so 0.6% on
    # the distance; the samples' mean difference adds about 1.5% (sd 0.03 on 2).
    metric = SlicedW2(SlicedW2.Params(num_projections=1000))
    m = torch.tensor([2.0, 0.0], dtype=torch.float64)
    assert metric(gaussian(2000, seed=1), gaussian(1500, seed=2) + m) == pytest.approx(
        2.0 / math.sqrt(2), rel=0.05
    )


# --------------------------------------------------------------------------------------------------
# Energy distance
# --------------------------------------------------------------------------------------------------


def test_energy_is_zero_for_identical_sets_and_positive_otherwise():
    x = gaussian(500)
    assert Energy()(x, x) == 0.0
    assert Energy()(x, x.flip(0)) == pytest.approx(0.0, abs=1e-6)  # same set, other order
    assert Energy()(x, gaussian(500, shift=0.1, seed=1)) > 0.0


def test_energy_is_the_v_statistic_square_root():
    x, y = gaussian(40, seed=1), gaussian(30, shift=0.5, seed=2)

    def mean_distance(a, b):
        return (a[:, None, :] - b[None, :, :]).norm(dim=-1).mean()

    squared = 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)
    assert Energy()(x, y) == pytest.approx(math.sqrt(squared.item()), rel=1e-10)


def test_energy_between_shifted_gaussians_matches_the_closed_form():
    # 1D, X ~ N(0, 1), Y ~ N(m, 1): E|X - Y| = E|N(m, 2)| and E|X - X'| = 2 / sqrt(pi).
    m = 1.0
    s = math.sqrt(2.0)
    abs_mean = s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s**2)) + m * math.erf(
        m / (s * math.sqrt(2))
    )
    expected = math.sqrt(2 * abs_mean - 2 * 2 / math.sqrt(math.pi))  # about 0.71
    # With 4000 points each the estimate has sd 0.015 (measured over 6 seeds); 0.05 is over 3 sd.
    value = Energy()(gaussian(4000, dim=1, seed=1), gaussian(4000, dim=1, shift=m, seed=2))
    assert value == pytest.approx(expected, abs=0.05)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "name"), [(W2, "w2"), (SlicedW2, "sliced-w2"), (Energy, "energy")])
def test_bad_input_is_refused_with_a_clear_error(cls, name):
    x = gaussian(10)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(FlowkitError) as error:
        cls()(bad, x)
    assert str(error.value) == (
        f"metric '{name}': samples contain 1 NaN or infinite values; the sampler or the model diverged "
        "(try more steps, a smaller step size or a lower learning rate)"
    )
    with pytest.raises(FlowkitError) as error:
        cls()(x, gaussian(10, dim=3))
    assert str(error.value) == (
        f"metric '{name}': samples have event shape (2,) but the reference has (3,); both sets must come "
        "from the same space"
    )
    with pytest.raises(FlowkitError) as error:
        cls()(x, torch.zeros(10))
    assert str(error.value) == f"metric '{name}': reference must have shape (N, *D) with N >= 1, got (10,)"


def test_metrics_flatten_the_event_shape():
    x = gaussian(50, dim=6, seed=1).reshape(50, 2, 3)
    y = gaussian(50, dim=6, shift=0.3, seed=2).reshape(50, 2, 3)
    for metric in (W2(), SlicedW2(), Energy()):
        assert metric(x, y) == pytest.approx(metric(x.reshape(50, 6), y.reshape(50, 6)), rel=1e-12)
