"""Data to data: the ``data-to-data`` path (its source a dataset), pairing two datasets (exact OT,
Sinkhorn, by both ends' labels), the likelihood with a source density, and the refusals."""

from __future__ import annotations

import copy
import math
import re
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flowkit_couplings.couplings import ExactOT, Sinkhorn, squared_distances
from flowkit_couplings.source import DataToDataPath
from flowkit_data.toy import EightGaussians, Moons
from scipy.optimize import linear_sum_assignment

from flowkit import hookimpl
from flowkit.engine import build_pipeline, resume_run, run_pipeline
from flowkit.engine.batches import BatchProducer
from flowkit.engine.build import check_source
from flowkit.engine.distributed import rank_seed
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.likelihood import evaluate_likelihood
from flowkit.engine.sample import draw_samples
from flowkit.errors import CapabilityError, FlowkitError
from flowkit.interfaces import Dataset
from flowkit.testing import make_manager

PIPE: dict[str, Any] = {
    "run": {"seed": 5},
    "data": {"kind": "moons"},
    "path": {"kind": "data-to-data", "source": {"kind": "eight-gaussians", "noise": 0.1}},
    "model": {"kind": "mlp", "hidden": [32, 32]},
    "loss": {"kind": "cfm"},
    "train": {"steps": 40, "batch_size": 64, "log_every": 20, "checkpoint_every": 20},
    "sample": {"simulator": "euler", "steps": 4, "n": 200},
    "evaluate": {"n": 200},
}


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def pipeline(manager, *overrides: str, **tables: Any):
    spec = copy.deepcopy(PIPE)
    spec.update(tables)
    return build_pipeline(spec, list(overrides), manager)


def near_a_centre(x: torch.Tensor, noise: float = 0.1) -> torch.Tensor:
    """Whether each point of ``x (n, 2)`` lies within 6 std of one of the eight centres."""
    centres = EightGaussians().centres()
    return torch.cdist(x.float(), centres).min(dim=1).values < 6 * noise


# ---------------------------------------------------------------------------------------------------
# The path and the source's density
# ---------------------------------------------------------------------------------------------------


def test_eight_gaussians_log_prob_is_the_mixture_density():
    data = EightGaussians(EightGaussians.Params(noise=0.3))
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.full((8,), 1 / 8, dtype=torch.float64)),
        torch.distributions.Independent(
            torch.distributions.Normal(data.centres().double(), torch.full((8, 2), 0.3, dtype=torch.float64)),
            1,
        ),
    )
    assert data.provides_log_prob
    torch.testing.assert_close(data.log_prob(x), mixture.log_prob(x), rtol=1e-12, atol=1e-12)
    noiseless = EightGaussians(EightGaussians.Params(noise=0.0))
    assert not noiseless.provides_log_prob
    with pytest.raises(CapabilityError, match="has no known density"):
        noiseless.log_prob(x)


def test_the_prior_is_the_source_bitwise_and_its_log_density_the_sources():
    source = EightGaussians()
    path = DataToDataPath(DataToDataPath.Params(source=source))
    drawn = path.sample_prior((300, 2), generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, source.sample(300, generator=torch.Generator().manual_seed(1)))
    assert path.source is source and path.noise_is_prior()
    assert torch.equal(path.prior_log_prob(drawn), source.log_prob(drawn).float())


def test_the_interpolant_and_its_target_are_the_straight_line_from_the_source():
    path = DataToDataPath(DataToDataPath.Params(source=EightGaussians()))
    g = torch.Generator().manual_seed(2)
    z, x0, t = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g), torch.rand(16, generator=g)
    x, target = path.sample_with_target(z, t, x0)
    torch.testing.assert_close(x, (1 - t[:, None]) * x0 + t[:, None] * z)
    assert torch.equal(target, z - x0)
    # given z alone (sigma = 0), x and z fix x0: the same target
    torch.testing.assert_close(path.target_velocity(x, z, t), z - x0, rtol=1e-4, atol=1e-4)
    # without x0 the path draws it from its source with the generator
    drawn = path.sample(z, torch.zeros(16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(drawn, EightGaussians().sample(16, generator=torch.Generator().manual_seed(3)))


def test_sigma_blurs_the_interpolant_but_not_its_target():
    path = DataToDataPath(DataToDataPath.Params(source=EightGaussians(), sigma=0.2))
    z, x0, t = torch.ones(4, 2), torch.zeros(4, 2), torch.full((4,), 0.5)
    x, target = path.sample_with_target(z, t, x0, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, 0.5 + 0.2 * eps)
    assert torch.equal(target, z - x0)
    with pytest.raises(CapabilityError, match="sigma > 0 has no velocity target given the data point alone"):
        path.target_velocity(x, z, t)


# ---------------------------------------------------------------------------------------------------
# The engine draws x0 from the source: training, sampling
# ---------------------------------------------------------------------------------------------------


def test_training_batches_take_x0_from_the_source_on_the_noise_stream(manager):
    pipe = pipeline(manager)
    producer = BatchProducer(pipe, 64, 0, torch.Generator().manual_seed(0))
    z, keywords = producer.next(0, ahead=False)
    stream = torch.Generator().manual_seed(rank_seed(pipe.run.seed, "noise", 0))
    assert torch.equal(keywords["x0"], EightGaussians().sample(64, generator=stream))
    assert torch.equal(
        z, Moons().sample(64, generator=torch.Generator().manual_seed(rank_seed(5, "data", 0)))
    )


def test_x0_statistics_are_the_sources_in_training_and_sampling(manager):
    pipe = pipeline(manager)
    producer = BatchProducer(pipe, 2000, 0, torch.Generator().manual_seed(0))
    _, keywords = producer.next(0, ahead=False)
    x0, _ = draw_samples(pipe, 2000)
    for points in (keywords["x0"], x0):
        assert bool(near_a_centre(points).all())  # every point by a centre: none is N(0, I) noise
        # mean 0 and mean per-coordinate variance 1 + noise^2 (toy.py's scale convention)
        assert float(points.mean(0).abs().max()) < 0.1
        assert abs(float(points.var(0).mean()) - 1.01) < 0.06


def test_a_pipeline_without_a_source_draws_no_noise_stream_as_before(manager):
    gaussian = pipeline(manager, path={"kind": "gaussian"})
    assert gaussian.path.source is None
    producer = BatchProducer(gaussian, 64, 0, torch.Generator().manual_seed(0))
    assert producer.noise_gen is None and not producer.pairs
    assert producer.next(0, ahead=False)[1] == {}


def test_exact_ot_pairs_the_two_datasets_a_step_ahead_as_in_step(manager):
    pipe = pipeline(manager, "loss.coupling=exact-ot")
    batches = []
    for ahead in (False, True):
        producer = BatchProducer(pipe, 128, 0, torch.Generator().manual_seed(0))
        batches.append([producer.next(step, ahead) for step in range(3)])
        producer.close()
    for (z, kw), (z2, kw2) in zip(*batches, strict=True):
        assert torch.equal(z, z2) and torch.equal(kw["x0"], kw2["x0"])
    # the pairs are the optimal assignment of the source batch to the data batch
    z, kw = batches[0][0]
    cost = squared_distances(z.double(), kw["x0"].double()).numpy()
    rows, cols = linear_sum_assignment(cost)
    assert math.isclose(
        float((z.double() - kw["x0"].double()).square().sum()), float(cost[rows, cols].sum()), rel_tol=1e-9
    )
    assert bool(near_a_centre(kw["x0"]).all())


def test_sinkhorn_pairs_the_two_datasets(manager):
    pipe = pipeline(manager, 'loss.coupling={ kind = "sinkhorn", epsilon = 0.01 }')
    producer = BatchProducer(pipe, 128, 0, torch.Generator().manual_seed(0))
    z, kw = producer.next(0, ahead=False)
    independent = BatchProducer(pipeline(manager), 128, 0, torch.Generator().manual_seed(0))
    _, drawn = independent.next(0, ahead=False)
    paired = float((z - kw["x0"]).square().sum(1).mean())
    assert paired < 0.5 * float((z - drawn["x0"]).square().sum(1).mean())
    assert bool(near_a_centre(kw["x0"]).all())


# ---------------------------------------------------------------------------------------------------
# Label-aware pairing when both ends are labelled
# ---------------------------------------------------------------------------------------------------


def labelled_batches(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) + 2.0
    return x0, x1, torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)


def test_exact_ot_with_both_ends_labelled_never_pairs_across_classes():
    x0, x1, y0, y = labelled_batches(97)
    assert not torch.equal(torch.bincount(y0), torch.bincount(y))  # unequal counts per class
    index = ExactOT(ExactOT.Params(method="scipy")).solve(x0, x1, y, y0=y0)
    assert torch.equal(y0[index], y)
    paired, same, labels = ExactOT()(x0, x1, y, y0=y0)
    assert torch.equal(paired, x0[index]) and same is x1 and labels is y
    # within a class of equal counts the pairing is the optimal permutation
    y0e = y[torch.randperm(97, generator=torch.Generator().manual_seed(1))]
    index = ExactOT().solve(x0, x1, y, y0=y0e)
    assert torch.equal(y0e[index], y) and len(set(index.tolist())) == 97
    for c in range(4):
        rows, columns = torch.nonzero(y == c).flatten(), torch.nonzero(y0e == c).flatten()
        cost = squared_distances(x1[rows].double(), x0[columns].double()).numpy()
        r, k = linear_sum_assignment(cost)
        got = float((x1[rows].double() - x0[index[rows]].double()).square().sum())
        assert math.isclose(got, float(cost[r, k].sum()), rel_tol=1e-9)


def test_sinkhorn_with_both_ends_labelled_never_pairs_across_classes():
    x0, x1, y0, y = labelled_batches(80, seed=3)
    coupling = Sinkhorn(Sinkhorn.Params(epsilon=0.1))
    plan = coupling.log_plan(x0, x1, y, y0=y0).exp()
    assert float(plan[y[:, None] != y0[None, :]].sum()) == 0.0
    paired, _, _ = coupling(x0, x1, y, torch.Generator().manual_seed(0), y0=y0)
    index = torch.cdist(paired, x0).argmin(dim=1)
    assert torch.equal(y0[index], y)


def test_a_class_missing_from_the_source_batch_is_refused_naming_it():
    x0, x1, y0, y = labelled_batches(20)
    y0 = y0.masked_fill(y0 == 2, 1)
    count = int((y == 2).sum())
    message = (
        f"coupling 'exact-ot': the source batch has no point of class 2, which {count} data points of "
        "the batch have; raise [train] batch_size so that every class is drawn at both ends"
    )
    with pytest.raises(FlowkitError, match=f"^{re.escape(message)}$"):
        ExactOT().solve(x0, x1, y, y0=y0)
    with pytest.raises(FlowkitError, match="coupling 'sinkhorn': source labels y0 were given without"):
        Sinkhorn()(x0, x1, None, y0=y0)


DIGITS_TO_DIGITS = {
    "data": {"kind": "digits"},
    "path": {"kind": "data-to-data", "source": {"kind": "digits"}},
    "model": {"kind": "mlp", "hidden": [16]},
    "loss": {"kind": "cfm", "coupling": "exact-ot"},
}


def test_the_training_loop_pairs_labelled_ends_within_their_classes(manager, monkeypatch):
    pipe = pipeline(manager, **DIGITS_TO_DIGITS)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    pair = ExactOT.pair

    def spy(self, solution, x0, x1, y=None, generator=None, *, y0=None):
        seen.append((solution, y, y0))
        return pair(self, solution, x0, x1, y, generator, y0=y0)

    monkeypatch.setattr(ExactOT, "pair", spy)
    producer = BatchProducer(pipe, 256, 0, torch.Generator().manual_seed(0))
    assert producer.match_labels
    for step in range(3):
        producer.next(step, ahead=True)
    producer.close()
    assert len(seen) == 3
    for index, y, y0 in seen:
        assert y is not None and y0 is not None and torch.equal(y0[index], y)


class _ThreeClasses(Dataset):
    """A stand-in labelled source of the digits' shape with 3 classes (the digits have 10)."""

    num_classes = 3

    @property
    def shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    def sample(self, n, generator=None, device=None):
        return torch.zeros(n, 1, 8, 8)


def test_labelled_ends_with_different_classes_are_refused(manager):
    pipe = pipeline(manager, **DIGITS_TO_DIGITS)
    source = _ThreeClasses()
    source.registered_as("dataset", "three")
    path = DataToDataPath(DataToDataPath.Params(source=source))
    path.registered_as("path", "data-to-data")
    assert pipe.loss is not None
    with pytest.raises(CapabilityError) as err:
        check_source(pipe.loss, path, pipe.dataset)
    assert str(err.value) == (
        "coupling 'exact-ot' pairs each data point with source points of its class, but the source "
        "dataset 'three' has 3 classes and [data] 'digits' has 10; give both the same classes"
    )


# ---------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------


def test_a_loss_that_draws_its_own_noise_is_refused_naming_the_source(manager):
    message = (
        "<dict>: [loss]: loss 'meanflow' draws its own Gaussian noise (it takes no x0), but path "
        "'data-to-data' starts from the dataset 'eight-gaussians'; use a loss that takes the source "
        'points, e.g. [loss] kind = "cfm"'
    )
    with pytest.raises(CapabilityError) as err:
        pipeline(
            manager,
            loss={"kind": "meanflow"},
            model={"kind": "mlp", "hidden": [8], "second_time": True},
        )
    assert str(err.value) == message


def test_a_source_of_another_shape_and_a_missing_source_are_refused(manager):
    with pytest.raises(FlowkitError) as err:
        pipeline(manager, path={"kind": "data-to-data", "source": {"kind": "digits"}})
    assert str(err.value) == (
        "<dict>: [path] (path 'data-to-data'): source: dataset 'digits' has samples of shape (1, 8, 8), but "
        "[data] 'moons' has (2,); a flow from data to data needs both of one shape"
    )
    with pytest.raises(FlowkitError) as err:
        pipeline(manager, path={"kind": "data-to-data"})
    assert str(err.value) == (
        "<dict>: [path] key 'source': missing required key (a dataset (a name or a table with 'kind'))"
    )
    with pytest.raises(FlowkitError) as err:
        DataToDataPath(DataToDataPath.Params(source="moons"))  # type: ignore[arg-type]
    assert str(err.value) == (
        'source: missing the dataset x_0 is drawn from; set it, e.g. source = { kind = "eight-gaussians" }'
    )


def test_likelihood_refuses_a_source_without_a_density_naming_it(manager):
    with pytest.raises(CapabilityError) as err:
        pipeline(
            manager,
            "evaluate.likelihood={}",
            data={"kind": "eight-gaussians"},
            path={"kind": "data-to-data", "source": {"kind": "moons"}},
        )
    assert str(err.value) == (
        "<dict>: [evaluate] likelihood: path 'data-to-data': its source dataset 'moons' has no density; "
        "likelihood needs a source with log_prob (e.g. eight-gaussians with noise > 0)"
    )


def test_likelihood_with_a_source_density_is_exact_for_the_identity_flow(manager):
    """A zero velocity carries the source onto itself: the likelihood of data drawn from the same
    distribution is the source's log_prob, exactly (no divergence, no motion)."""
    pipe = pipeline(
        manager,
        "evaluate.likelihood={ n = 64, steps = 4 }",
        data={"kind": "eight-gaussians", "noise": 0.1},
    )
    with torch.no_grad():
        for parameter in pipe.model.parameters():
            parameter.zero_()
    settings = pipe.evaluate.likelihood
    assert settings is not None
    report = evaluate_likelihood(pipe, settings)
    assert report.metrics["nll_gap"] == pytest.approx(0.0, abs=1e-5)
    points = torch.from_numpy(np.asarray([[math.sqrt(2.0), 0.0]], dtype=np.float32))
    exact = evaluate_likelihood(pipe, settings, data=points).log_prob
    torch.testing.assert_close(exact, EightGaussians().log_prob(points.double()), rtol=1e-6, atol=1e-6)


def test_the_likelihood_command_refuses_a_source_without_a_density_in_one_line(manager, tmp_path):
    from click.testing import CliRunner

    from flowkit.cli import main

    spec = copy.deepcopy(PIPE)
    spec.update(
        data={"kind": "eight-gaussians"},
        path={"kind": "data-to-data", "source": {"kind": "moons"}},
        train={"steps": 3, "batch_size": 16},
        sample={"steps": 1, "n": 50},
        evaluate={"n": 50, "floor_repeats": 1},
    )
    out = tmp_path / "run"
    run_pipeline(build_pipeline(spec, [], manager), manager, out=str(out), quiet=True)
    result = CliRunner().invoke(main, ["likelihood", str(out), "--n", "10"])
    assert result.exit_code != 0
    assert result.output == (
        "Error: path 'data-to-data': its source dataset 'moons' has no density; likelihood needs a "
        "source with log_prob (e.g. eight-gaussians with noise > 0)\n"
    )


# ---------------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------------


def _interrupt_at(step: int):
    class Interrupter:
        @staticmethod
        @hookimpl
        def flowkit_train_step(run, step: int, loss) -> None:
            if step == Interrupter.target and run.resumed_from is None:
                signal.raise_signal(signal.SIGINT)

    Interrupter.target = step  # type: ignore[attr-defined]
    return "interrupter", Interrupter()


@pytest.mark.parametrize("coupling", ["independent", "exact-ot"])
def test_resume_with_a_data_source_is_bitwise(manager, tmp_path, coupling):
    spec = copy.deepcopy(PIPE)
    spec["loss"]["coupling"] = coupling
    ref = run_pipeline(build_pipeline(spec, [], manager), manager, out=str(tmp_path / "ref"), quiet=True)
    stopping = make_manager(warn=False, plugins=[_interrupt_at(27)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        run_pipeline(build_pipeline(spec, [], stopping), stopping, out=str(out), quiet=True)
    resume_run(out, manager, quiet=True)
    weights = [torch.load(d / "model.pt", weights_only=True)["model"] for d in (ref.directory, out)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert (ref.directory / "samples.npy").read_bytes() == (out / "samples.npy").read_bytes()


# ---------------------------------------------------------------------------------------------------
# Quality: 8 Gaussians -> moons, one Euler step
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_exact_ot_halves_the_one_step_distance_of_the_independent_coupling(manager, tmp_path):
    """examples/gaussians-to-moons.toml at reduced size (800 training steps, 1,000 samples): one Euler
    step of the exact-OT model is at most half the independent coupling's one-step W2 (issue 24)."""
    example = Path(__file__).resolve().parents[1] / "examples" / "gaussians-to-moons.toml"
    short = ["train.steps=800", "sample.n=1000", "evaluate.n=1000", "report.plots=false"]
    distances = {}
    for coupling in ("exact-ot", "independent"):
        pipe = build_pipeline(example, [*short, f"loss.coupling={coupling}"], manager)
        metrics = run_pipeline(pipe, manager, out=str(tmp_path / coupling), quiet=True).metrics
        assert metrics["nfe"] == 1
        distances[coupling] = metrics["distance"]
    assert distances["exact-ot"] <= 0.5 * distances["independent"], distances
