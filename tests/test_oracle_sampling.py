"""The sharpest end-to-end checks (docs/math.md, "A ground truth to test against"): the exact mixture
field and score, simulated through the real pipeline, carry N(0, I) to the mixture; a network trained
with CFM approaches that field."""

from __future__ import annotations

import pytest
import torch

from flowkit.engine import TrainLoop, build_pipeline, run_pipeline
from flowkit.testing import make_manager

ORACLE = """
[run]
seed = 1

[data]
kind = "gaussian-mixture"
preset = "{preset}"

[path]
kind = "gaussian"
schedule = {{ kind = "{schedule}" }}

[model]
kind = "mixture-oracle"

[sample]
simulator = "heun"
steps = 40
n = 2000
trajectories = 0

[evaluate]
n = 2000

[report]
plots = false
log = false
"""


@pytest.fixture(scope="module")
def manager():
    return make_manager()


def ratio(write_pipeline, manager, tmp_path, preset, schedule, *overrides):
    path = write_pipeline(ORACLE.format(preset=preset, schedule=schedule), f"{preset}-{schedule}.toml")
    pipe = build_pipeline(path, overrides, manager)
    metrics = run_pipeline(pipe, manager, out=str(tmp_path / "run"), quiet=True).metrics
    return metrics["distance"] / metrics["noise_floor"], metrics


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["ot", "vp", "cosine"])
def test_oracle_ode_carries_the_prior_to_the_mixture(write_pipeline, manager, tmp_path, schedule):
    r, metrics = ratio(write_pipeline, manager, tmp_path, "ring", schedule)
    assert metrics["nfe"] == 80
    assert r <= 1.5, metrics


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sigma", "schedule"), [(0.5, "constant"), (1.0, "constant"), (2.0, "constant"), (4.0, "linear-decay")]
)
def test_oracle_sde_keeps_the_marginals_for_any_sigma(write_pipeline, manager, tmp_path, sigma, schedule):
    dynamics = f'sample.dynamics={{ kind = "extension-sde", sigma = {sigma}, sigma_schedule = "{schedule}" }}'
    r, metrics = ratio(
        write_pipeline,
        manager,
        tmp_path,
        "asymmetric",
        "ot",
        dynamics,
        "sample.simulator=euler-maruyama",
        "sample.steps=250",
    )
    assert r <= 1.5, metrics


@pytest.mark.slow
def test_too_few_sde_steps_with_a_large_sigma_is_detected(write_pipeline, manager, tmp_path):
    """The check above can fail: a coarse Euler-Maruyama with large constant noise misses the mixture."""
    dynamics = 'sample.dynamics={ kind = "extension-sde", sigma = 4.0 }'
    r, _ = ratio(
        write_pipeline,
        manager,
        tmp_path,
        "asymmetric",
        "ot",
        dynamics,
        "sample.simulator=euler-maruyama",
        "sample.steps=8",
    )
    assert r > 1.5


@pytest.mark.slow
def test_cfm_training_approaches_the_oracle_field(write_pipeline, manager):
    """The mean squared error between the network and the exact marginal field falls as training goes on."""
    text = ORACLE.format(preset="asymmetric", schedule="ot").replace(
        'kind = "mixture-oracle"',
        'kind = "mlp"\nhidden = [128, 128]\n\n[loss]\nkind = "cfm"\n\n'
        '[train]\nsteps = 1500\nbatch_size = 256\nlr = 3e-3\nlr_schedule = "constant"\nema_decay = 0',
    )
    pipe = build_pipeline(write_pipeline(text), (), manager)
    oracle_cls = manager.registry.get("model", "mixture-oracle").cls
    exact = oracle_cls.from_components(pipe.dataset, pipe.path).roles()["velocity"]
    loop = TrainLoop(pipe)
    net = pipe.context.roles["velocity"]

    gen = torch.Generator().manual_seed(0)
    z = pipe.dataset.sample(4000, generator=gen)
    t = torch.rand(4000, generator=gen) * 0.98 + 0.01
    x = pipe.path.sample(z, t, generator=gen)
    target = exact(x, t)

    def error() -> float:
        with torch.no_grad():
            return float(((net(x, t) - target) ** 2).sum(dim=1).mean())

    errors = [error()]
    for block in (100, 400, 1000):
        for _ in range(block):
            loop.step()
        errors.append(error())
    assert errors[0] > 2 * errors[1] > 2 * errors[-1], errors
    assert errors[-1] < 0.1 * float((target**2).sum(dim=1).mean()), errors
