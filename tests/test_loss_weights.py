"""Loss weightings over time (``loss_weight`` of ``cfm`` and ``dsm``): each weight equals its closed
form in flowkit's time (noise at t = 0) on the OT and cosine paths, all three targets (velocity, noise,
score) put the same weight on the data error (min(SNR, gamma), its soft minimum, EDM's lambda(sigma)),
the weighted loss is that weight times each sample's squared error, ``none`` is the unweighted loss
bit for bit, and a non-Gaussian path is refused (docs/math.md, "Loss weightings")."""

from __future__ import annotations

import math

import pytest
import torch
from flowkit_losses.weights import time_weights

from flowkit.engine.build import build_pipeline
from flowkit.errors import FlowkitError
from flowkit.testing import make_manager

GAMMA, SIGMA_DATA = 5.0, 0.5


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def _pipeline(manager, schedule="ot", loss=None, path=None):
    return build_pipeline(
        {
            "data": {"kind": "moons"},
            "path": path or {"kind": "gaussian", "schedule": {"kind": schedule}},
            "model": {"kind": "mlp", "hidden": [8]},
            "loss": loss or {"kind": "cfm"},
            "train": {"steps": 1, "batch_size": 8},
            "sample": {"steps": 2, "n": 8},
            "evaluate": {"n": 8},
        },
        (),
        manager,
    )


T = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)


def _ot(kind):
    """On the OT path (alpha = t, beta = 1 - t, alpha' beta - alpha beta' = 1), by hand."""
    t, s = T, 1 - T
    snr, sigma = (t / s) ** 2, s / t
    data = {  # the weight on the data error, w_z
        "min-snr": torch.clamp(snr, max=GAMMA),
        "soft-min-snr": 1 / (1 / snr + 1 / GAMMA),
        "edm": (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2,  # Karras et al. 2022, lambda(sigma)
    }[kind]
    return {"velocity": data * s**2, "noise": data / snr, "score": data / snr * s**2}


@pytest.mark.parametrize("kind", ["min-snr", "soft-min-snr", "edm"])
@pytest.mark.parametrize("target", ["velocity", "noise", "score"])
def test_each_weight_is_its_closed_form_on_the_ot_path(manager, kind, target):
    path = _pipeline(manager).path
    got = time_weights(kind, target, path, T, GAMMA, SIGMA_DATA)
    torch.testing.assert_close(got, _ot(kind)[target], rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["min-snr", "soft-min-snr", "edm"])
def test_every_target_weights_the_data_error_alike_on_the_cosine_path(manager, kind):
    path = _pipeline(manager, "cosine").path
    a, b = torch.sin(math.pi * T / 2), torch.cos(math.pi * T / 2)
    snr = (a / b) ** 2
    data = {"min-snr": torch.clamp(snr, max=GAMMA), "soft-min-snr": GAMMA * snr / (snr + GAMMA)}.get(
        kind, snr + 1 / SIGMA_DATA**2
    )
    # velocity error = (k / beta) data error with k = alpha' beta - alpha beta' = pi / 2; noise error =
    # -(alpha / beta) data error; score error = noise error / beta.
    implied = {
        "velocity": time_weights(kind, "velocity", path, T, GAMMA, SIGMA_DATA) * (math.pi / 2 / b) ** 2,
        "noise": time_weights(kind, "noise", path, T, GAMMA, SIGMA_DATA) * snr,
        "score": time_weights(kind, "score", path, T, GAMMA, SIGMA_DATA) * snr / b**2,
    }
    for target, weight in implied.items():
        torch.testing.assert_close(weight, data, rtol=1e-10, atol=0, msg=target)


def test_weights_stay_finite_at_the_ends_where_their_limits_are(manager):
    path = _pipeline(manager).path
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert time_weights("min-snr", "velocity", path, ends, GAMMA, SIGMA_DATA).tolist() == [0.0, 0.0]
    assert time_weights("edm", "velocity", path, ends, GAMMA, SIGMA_DATA).tolist() == [4.0, 1.0]
    assert time_weights("min-snr", "noise", path, ends, GAMMA, SIGMA_DATA).tolist() == [1.0, 0.0]
    assert time_weights("soft-min-snr", "noise", path, ends, GAMMA, SIGMA_DATA).tolist() == [1.0, 0.0]


def _batch(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, generator=g), torch.rand(n, generator=g), torch.randn(n, 2, generator=g)


@pytest.mark.parametrize(
    ("loss", "target"),
    [
        ({"kind": "cfm", "loss_weight": "min-snr", "snr_gamma": 2.0}, "velocity"),
        ({"kind": "cfm", "loss_weight": "edm", "sigma_data": 0.7}, "velocity"),
        ({"kind": "dsm", "loss_weight": "soft-min-snr"}, "noise"),
        ({"kind": "dsm", "loss_weight": "min-snr", "weighting": "score"}, "score"),
    ],
)
def test_the_weighted_loss_is_the_weight_times_each_samples_squared_error(manager, loss, target):
    schedule = "ot" if loss["kind"] == "cfm" else "vp"
    pipeline = _pipeline(manager, schedule, loss)
    model, path = pipeline.context.roles["velocity" if target == "velocity" else "score"], pipeline.path
    z, t, noise = _batch()
    x = path.sample(z, t, noise)
    with torch.no_grad():
        got = pipeline.loss.loss_at(model, path, z, t, noise)
        if target == "velocity":
            error = model(x, t) - path.sample_with_target(z, t, noise)[1]
        elif target == "noise":
            error = model.predict_noise(x, t) - noise
        else:
            error = model(x, t) - path.target_score_from_noise(noise, t)
    p = pipeline.loss.params
    weight = time_weights(p.loss_weight, target, path, t, p.snr_gamma, p.sigma_data)
    torch.testing.assert_close(got, (error.square().mean(dim=1) * weight).mean(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", ["cfm", "dsm"])
def test_none_is_the_unweighted_loss_bitwise(manager, kind):
    schedule = "ot" if kind == "cfm" else "vp"
    plain = _pipeline(manager, schedule, {"kind": kind})
    none = _pipeline(manager, schedule, {"kind": kind, "loss_weight": "none"})
    none.network.load_state_dict(plain.network.state_dict())
    z, t, noise = _batch()
    role = "velocity" if kind == "cfm" else "score"
    a = plain.loss.loss_at(plain.context.roles[role], plain.path, z, t, noise)
    b = none.loss.loss_at(none.context.roles[role], none.path, z, t, noise)
    assert torch.equal(a, b)
    with torch.no_grad():
        weighted = _pipeline(manager, schedule, {"kind": kind, "loss_weight": "min-snr"})
        weighted.network.load_state_dict(plain.network.state_dict())
        other = weighted.loss.loss_at(weighted.context.roles[role], weighted.path, z, t, noise)
    assert not torch.equal(a, other)


def test_a_weight_on_a_path_without_snr_is_one_clear_error(manager):
    with pytest.raises(FlowkitError) as caught:
        _pipeline(manager, loss={"kind": "cfm", "loss_weight": "min-snr"}, path={"kind": "brownian-bridge"})
    message = "loss 'cfm' with loss_weight = \"min-snr\" weights by the signal-to-noise ratio"
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
