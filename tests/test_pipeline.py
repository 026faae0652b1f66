"""The pipeline stages: reproducibility, seeds per stage, weights, and failures that keep the user's work."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest
import torch
from conftest import registering_plugin, tiny_file

from flowkit.engine import TrainLoop, build_pipeline, load_weights, run_pipeline, stage_seed
from flowkit.errors import FlowkitError
from flowkit.interfaces import ProbabilityPath
from flowkit.params import param
from flowkit.testing import make_manager


@pytest.fixture(scope="module")
def manager():
    return make_manager()


def run(path, manager, out, *overrides):
    return run_pipeline(build_pipeline(path, overrides, manager), manager, out=str(out), quiet=True)


@pytest.mark.slow
def test_same_file_and_seed_give_the_same_samples(tiny_pipeline, manager, tmp_path):
    first = run(tiny_pipeline, manager, tmp_path / "a")
    second = run(tiny_pipeline, manager, tmp_path / "b")
    other_seed = run(tiny_pipeline, manager, tmp_path / "c", "run.seed=4")
    a, b, c = (np.load(r.directory / "samples.npy") for r in (first, second, other_seed))
    assert np.array_equal(a, b)
    assert first.metrics["distance"] == second.metrics["distance"]
    assert np.abs(a - c).mean() > 0.01
    weights_a = torch.load(first.directory / "model.pt", weights_only=True)["model"]
    weights_b = torch.load(second.directory / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_stage_seeds_are_independent_streams():
    seeds = {stage_seed(0, s) for s in ("init", "data", "loss", "sample", "evaluate")}
    assert len(seeds) == 5
    assert stage_seed(0, "data") != stage_seed(1, "data")
    assert all(0 <= s < 2**63 for s in seeds)


def test_the_initial_weights_depend_on_the_seed_only(tiny_pipeline, manager):
    torch.manual_seed(123)  # the global RNG state must not leak into the model's initialisation
    a = build_pipeline(tiny_pipeline, (), manager).model.state_dict()
    torch.manual_seed(456)
    b = build_pipeline(tiny_pipeline, (), manager).model.state_dict()
    c = build_pipeline(tiny_pipeline, ["run.seed=9"], manager).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_weights_load_back_and_reproduce_the_model(tiny_pipeline, manager, tmp_path):
    result = run(tiny_pipeline, manager, tmp_path / "run")
    fresh = build_pipeline(tiny_pipeline, ["run.seed=77"], manager).model
    step = load_weights(result.directory / "model.pt", fresh)
    assert step == 60
    trained = result.pipeline.model
    x, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(fresh(x, t), trained(x, t))  # the network samples with the EMA weights
    with pytest.raises(FlowkitError, match=r"model\.pt: no 'ema' weights \(has: model, raw\)"):
        load_weights(result.directory / "model.pt", fresh, which="ema")


def test_train_loop_reduces_the_loss(tiny_pipeline, manager):
    # The CFM loss of moons levels off near 1.36 (the conditional target's variance) from about 2.
    pipe = build_pipeline(tiny_pipeline, ["train.lr=3e-3", "train.lr_schedule=constant"], manager)
    loop = TrainLoop(pipe)
    assert loop.scheduler is None  # a constant rate adds no per-step scheduler work
    first = torch.stack([loop.step() for _ in range(20)]).mean()
    for _ in range(300):
        loop.step()
    last = torch.stack([loop.step() for _ in range(50)]).mean()
    assert last < 0.85 * first


def test_divergence_is_caught_at_its_step_and_names_no_checkpoint(tiny_pipeline, manager, tmp_path):
    pipe = build_pipeline(tiny_pipeline, ["train.lr=1e30", "train.log_every=5"], manager)
    with pytest.raises(FlowkitError) as err:
        run_pipeline(pipe, manager, out=str(tmp_path / "div"), quiet=True)
    message = str(err.value)
    # lr = 1e30: the first update blows the weights up, so the loss of step 2 is the first non-finite one
    assert "training diverged at step 2 (loss nan)" in message
    assert "no checkpoint was written before it; lower [train] lr (now 1e+30, e.g. 1e+29)" in message
    assert not list((tmp_path / "div").glob("*.pt"))  # no file holds non-finite weights
    status = json.loads((tmp_path / "div" / "status.json").read_text())
    assert (status["state"], status["step"]) == ("diverged", 2)


def test_checkpoints_are_written_every_n_steps_and_pruned(tiny_pipeline, manager, tmp_path):
    result = run(tiny_pipeline, manager, tmp_path / "ck", "train.checkpoint_every=10")
    names = sorted(p.name for p in result.directory.glob("checkpoint-*.pt"))
    # every 10 steps and the final one; keep_checkpoints = 3 keeps the newest three
    assert names == ["checkpoint-0000040.pt", "checkpoint-0000050.pt", "checkpoint-0000060.pt"]
    every = run(
        tiny_pipeline, manager, tmp_path / "all", "train.checkpoint_every=25", "train.keep_checkpoints=0"
    )
    names = sorted(p.name for p in every.directory.glob("checkpoint-*.pt"))
    assert names == ["checkpoint-0000025.pt", "checkpoint-0000050.pt", "checkpoint-0000060.pt"]


def test_exact_model_refuses_training_tables(write_pipeline, manager):
    from flowkit.errors import ConfigError

    path = write_pipeline("""
        [data]
        kind = "gaussian-mixture"
        [path]
        kind = "gaussian"
        [model]
        kind = "mixture-oracle"
        [train]
        steps = 10
    """)
    with pytest.raises(
        ConfigError,
        match=r"\[train\] is set, but model 'mixture-oracle' is exact and is not "
        r"trained; remove \[train\]",
    ):
        build_pipeline(path, (), manager)


def test_more_evaluation_points_than_samples_is_refused(tiny_pipeline, manager):
    from flowkit.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"\[evaluate\] key 'n' \(from --set\): 500 held-out points need as "
        r"many samples, but \[sample\] n = 200",
    ):
        build_pipeline(tiny_pipeline, ["evaluate.n=500"], manager)


def test_weight_average_is_the_warmed_up_ema():
    """avg <- d_k avg + (1 - d_k) param, d_k = min(decay, (1 + k) / (10 + k)), from the initial weights."""
    from torch import nn

    from flowkit.engine import WeightAverage

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 2))
    expected = {k: v.detach().clone() for k, v in net.named_parameters()}
    mine = WeightAverage(net, 0.9)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for k in range(40):
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        mine.update()
        d = min(0.9, (1 + k) / (10 + k))
        for name, weight in net.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * weight.detach()
    averaged = mine.state_dict()
    for name, value in expected.items():
        assert torch.allclose(averaged[name], value, atol=1e-6), name
    assert not torch.allclose(averaged["0.weight"], net.state_dict()["0.weight"])


def test_weight_average_forgets_the_initial_weights():
    """With decay 0.999 and no warm-up, 37% of the random start would remain after 1,000 steps."""
    from torch import nn

    from flowkit.engine import WeightAverage

    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    average = WeightAverage(net, 0.999)
    with torch.no_grad():
        net.weight.fill_(1.0)  # the trained value, from the first step on
    for _ in range(1000):
        average.update()
    assert average.state_dict()["weight"].item() > 0.99


# ---------------------------------------------------------------------------------------------------
# Randomness of a third-party path, and torch's global generator
# ---------------------------------------------------------------------------------------------------


class StochasticInterpolant(ProbabilityPath):
    """``x = (1 - t) x0 + t z + gamma(t) w`` with ``gamma(t) = scale t (1 - t)`` and ``w ~ N(0, I)``."""

    @attrs.define(frozen=True)
    class Params:
        scale: float = param(0.5, doc="Amplitude of the latent noise gamma.")

    def sample_prior(self, shape, generator=None, device=None):
        return torch.randn(shape, generator=generator, device=device)

    def _draw(self, z, t, noise, generator):
        x0 = noise if noise is not None else torch.randn(z.shape, generator=generator, dtype=z.dtype)
        w = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        tb = t.reshape(-1, *([1] * (z.dim() - 1)))
        gamma, d_gamma = self.params.scale * tb * (1 - tb), self.params.scale * (1 - 2 * tb)
        return (1 - tb) * x0 + tb * z + gamma * w, z - x0 + d_gamma * w

    def sample(self, z, t, noise=None, generator=None):
        return self._draw(z, t, noise, generator)[0]

    def sample_with_target(self, z, t, noise=None, generator=None):
        return self._draw(z, t, noise, generator)

    def target_velocity(self, x, z, t):
        tb = t.reshape(-1, *([1] * (z.dim() - 1)))
        return (z - x) / (1 - tb).clamp_min(1e-3)


def test_a_path_with_extra_randomness_draws_it_from_the_runs_generators(tmp_path):
    manager = make_manager(
        plugins=[registering_plugin("interpolant", ("path", "interpolant", StochasticInterpolant))]
    )
    path = tiny_file(
        tmp_path, replace={'kind = "gaussian"\nschedule = { kind = "ot" }': 'kind = "interpolant"'}
    )
    torch.manual_seed(1)  # the global generator differs between the runs: it must not matter
    a = run(path, manager, tmp_path / "a")
    torch.manual_seed(2)
    b = run(path, manager, tmp_path / "b")
    c = run(path, manager, tmp_path / "c", "run.seed=4")
    first, second, other = (np.load(r.directory / "samples.npy") for r in (a, b, c))
    assert isinstance(a.pipeline.path, StochasticInterpolant)
    assert np.isfinite(first).all()
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_a_run_leaves_torchs_global_generator_alone(tmp_path):
    manager = make_manager()
    torch.manual_seed(11)
    before = torch.get_rng_state()
    # The reporters run too (progress bars: quiet=False); plots are left out (matplotlib is slow).
    pipeline = build_pipeline(tiny_file(tmp_path), (), manager)
    assert torch.equal(before, torch.get_rng_state()), "building the pipeline consumed the global RNG"
    run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=False)
    assert torch.equal(before, torch.get_rng_state()), "the run consumed the global RNG"
