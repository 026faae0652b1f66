"""The plugin guide's worked examples (docs/plugin-examples/guide_examples, quoted in
docs/plugin-guide.md): each registers cleanly and does the maths its docstring states, together they
build, train and sample a pipeline, and every kind flowkit has is given a worked example in the guide.
A change of the contract under them fails here, not in a reader's hands."""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from flowkit import docs
from flowkit.api import load_pipeline
from flowkit.engine import build_pipeline
from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext
from flowkit.testing import build_component, check_component, make_manager

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "plugin-examples"
GUIDE = ROOT / "docs" / "plugin-guide.md"
if str(EXAMPLES) not in sys.path:  # the examples are a plugin package of their own, not installed
    sys.path.insert(0, str(EXAMPLES))

import guide_examples  # noqa: E402
from guide_examples.couplings import SortedCoupling  # noqa: E402
from guide_examples.data import CSVPoints, GaussianRing  # noqa: E402
from guide_examples.devices import PinnedCPU  # noqa: E402
from guide_examples.dynamics import SwirlFlow, rotate  # noqa: E402
from guide_examples.grids import CosineGrid  # noqa: E402
from guide_examples.guiders import RampGuidance  # noqa: E402
from guide_examples.interpolant import ScaledLinearPath  # noqa: E402
from guide_examples.losses import AsVelocity, WeightedVelocityLoss  # noqa: E402
from guide_examples.metrics import MeanGap  # noqa: E402
from guide_examples.networks import ResidualMLP  # noqa: E402
from guide_examples.summary import MeanRadius, Statistic  # noqa: E402
from guide_examples.times import BetaTime  # noqa: E402
from test_docs import _excerpts  # noqa: E402  (the guide's excerpt mechanism, checked verbatim there)

COMPONENTS = {
    ("dataset", "gaussian-ring"): GaussianRing,
    ("dataset", "csv-points"): CSVPoints,
    ("path", "scaled-linear"): ScaledLinearPath,
    ("model", "residual-mlp"): ResidualMLP,
    ("loss", "weighted-velocity"): WeightedVelocityLoss,
    ("coupling", "sorted"): SortedCoupling,
    ("dynamics", "swirl"): SwirlFlow,
    ("timegrid", "cosine"): CosineGrid,
    ("time", "beta"): BetaTime,
    ("guider", "ramp"): RampGuidance,
    ("metric", "mean-gap"): MeanGap,
    ("device", "pinned-cpu"): PinnedCPU,
}


@pytest.fixture
def threads_kept():
    """Building ``pinned-cpu`` sets torch's thread count for the process; put it back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def manager():
    return make_manager(plugins=[guide_examples])


# --- registration -----------------------------------------------------------------------------------


def test_every_example_registers_cleanly_with_documented_parameters(manager):
    assert manager.problems == []
    provided = {(e.kind, e.name): e.cls for e in manager.components_of("guide_examples")}
    assert provided == {**COMPONENTS, ("statistic", "mean-radius"): MeanRadius}
    for (kind, _), cls in COMPONENTS.items():
        check_component(kind, cls)


def test_add_kind_makes_a_kind_whose_components_a_plugin_table_builds(manager):
    assert manager.registry.kinds()[-1] == "statistic"
    assert manager.registry.interface("statistic") is Statistic
    assert "guide_examples.summary.MeanRadius" in docs.describe_component(manager, "statistic", "mean-radius")
    assert 'statistic  Statistic  "mean-radius"' in docs.describe_section("summary", manager.registry)
    pipe = build_pipeline(
        {**ring_pipeline(), "summary": {"statistic": "mean-radius", "key": "r"}}, (), manager
    )
    settings = pipe.table("summary")
    assert isinstance(settings.statistic, MeanRadius) and settings.key == "r"
    with pytest.raises(FlowkitError, match=r"unknown statistic 'mean-radus'.*Did you mean 'mean-radius'"):
        build_pipeline({**ring_pipeline(), "summary": {"statistic": "mean-radus"}}, (), manager)


def test_every_kind_has_a_worked_example_in_the_guide():
    """A kind added to flowkit without a section ``### The kind `KIND` ...`` in the guide fails here."""
    text = GUIDE.read_text(encoding="utf-8")
    headed = set(re.findall(r"^### The kind `([a-z-]+)`", text, flags=re.MULTILINE))
    missing = set(make_manager(warn=False).registry.kinds()) - headed
    assert not missing, f"docs/plugin-guide.md has no worked example of the kinds {sorted(missing)}"
    assert "statistic" in headed  # the kind added with registry.add_kind


def test_the_guide_quotes_every_example_module():
    quoted = {path for path, _ in _excerpts(GUIDE.read_text(encoding="utf-8"))}
    modules = {p.relative_to(ROOT).as_posix() for p in (EXAMPLES / "guide_examples").glob("*.py")}
    assert modules <= quoted, f"not quoted in docs/plugin-guide.md: {sorted(modules - quoted)}"


# --- each example does what its docstring says --------------------------------------------------------


def test_ring_log_prob_is_the_mixture_density():
    ring = GaussianRing(GaussianRing.Params(modes=5, radius=1.5, std=0.3))
    x = torch.randn(64, 2, dtype=torch.float64) * 2
    dist = torch.distributions
    centres = ring.centres().double()
    mixture = dist.MixtureSameFamily(
        dist.Categorical(torch.ones(5, dtype=torch.float64)),
        dist.Independent(dist.Normal(centres, 0.3 * torch.ones_like(centres)), 1),
    )
    torch.testing.assert_close(ring.log_prob(x), mixture.log_prob(x))
    samples = ring.sample(20000, torch.Generator().manual_seed(0))
    assert samples.shape == (20000, 2) and samples.dtype == torch.float32
    # each point is within 5 std of its centre, and the modes are about equally used
    nearest = torch.cdist(samples, ring.centres()).min(dim=1)
    assert float(nearest.values.max()) < 5 * 0.3
    counts = torch.bincount(nearest.indices, minlength=5).double() / 20000
    assert float((counts - 0.2).abs().max()) < 0.02


def test_scaled_linear_path_ends_velocity_and_prior_density():
    path = ScaledLinearPath(ScaledLinearPath.Params(scale=2.5))
    z, noise = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * 0.9
    x, u = path.sample_with_target(z, t, noise)
    torch.testing.assert_close(path.sample(z, torch.zeros(8, dtype=torch.float64), noise), 2.5 * noise)
    torch.testing.assert_close(path.sample(z, torch.ones(8, dtype=torch.float64), noise), z)
    h = 1e-3  # x_t is linear in t: the difference quotient is the velocity to rounding
    torch.testing.assert_close((path.sample(z, t + h, noise) - x) / h, u)
    torch.testing.assert_close(path.target_velocity(x, z, t), u)
    normal = torch.distributions.Normal(0.0, 2.5)
    torch.testing.assert_close(path.prior_log_prob(x), normal.log_prob(x).sum(1))


def test_residual_mlp_keeps_the_event_shape():
    context = BuildContext(dataset=GaussianRing())
    net = build_component(
        make_manager(plugins=[guide_examples], builtins=False),
        "model",
        {"kind": "residual-mlp", "width": 16, "blocks": 3},
        context,
    )
    assert isinstance(net, ResidualMLP) and len(net.blocks) == 3
    assert net(torch.randn(5, 2), torch.rand(5)).shape == (5, 2)
    images = ResidualMLP(ResidualMLP.Params(width=8), data_shape=(3, 4))
    assert images(torch.randn(2, 3, 4), torch.rand(2)).shape == (2, 3, 4)


def test_weighted_loss_is_zero_for_the_exact_field_and_weights_by_time(manager):
    loss = build_component(manager, "loss", {"kind": "weighted-velocity", "power": 2.0})
    path = ScaledLinearPath(ScaledLinearPath.Params(scale=0.5))
    z = torch.tensor([[1.0, -2.0]], dtype=torch.float64).expand(256, 2)  # one data point: u_t(x) known

    def exact(x, t):
        return (z - x) / (1 - t[:, None])

    assert float(loss(exact, path, z, torch.Generator().manual_seed(1))) < 1e-20
    # a zero field: the loss is the weighted mean of |u_t(x|z)|^2 over the same draws
    g = torch.Generator().manual_seed(2)
    got = loss(lambda x, t: torch.zeros_like(x), path, z, g)
    g.manual_seed(2)
    t = torch.rand(256, generator=g, dtype=torch.float64) * (1 - 1e-4)
    target = z - 0.5 * torch.randn(z.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(got, ((1 - t) ** 2 * target.pow(2).mean(1)).mean())
    role = loss.model_role(torch.nn.Identity(), path)
    assert isinstance(role, AsVelocity)


def test_sorted_coupling_is_the_optimal_1d_pairing():
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(6, 1, generator=g), torch.randn(6, 1, generator=g) * 3 + 1
    labels = torch.arange(6)
    paired, same_x1, same_labels = SortedCoupling()(x0, x1, labels)
    assert same_x1 is x1 and same_labels is labels
    assert sorted(paired[:, 0].tolist()) == sorted(x0[:, 0].tolist())
    best = min(float((x0[list(p)] - x1).pow(2).sum()) for p in itertools.permutations(range(6)))
    assert float((paired - x1).pow(2).sum()) == pytest.approx(best, rel=1e-6)


def test_swirl_rotates_a_standard_normal_by_its_closed_form_angle(manager):
    """Velocity 0 and score -x (a standard normal at every t): ``dx/dt = -c (1 - t)^2 J x``, a rotation by
    ``-c / 3`` over ``[0, 1]``; the swirl alone leaves N(0, I) unchanged."""
    c = 1.2
    flow = SwirlFlow(
        SwirlFlow.Params(swirl=c), velocity=lambda x, t: torch.zeros_like(x), score=lambda x, t: -x
    )
    x0 = torch.randn(16, 2, dtype=torch.float64)
    rk4 = build_component(manager, "simulator", "rk4")
    x1 = rk4.simulate(flow, x0, torch.linspace(0, 1, 101, dtype=torch.float64))
    angle = -c / 3
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
    )
    torch.testing.assert_close(x1, x0 @ rotation.T, atol=1e-9, rtol=0)
    torch.testing.assert_close(
        rotate(torch.tensor([[1.0, 2.0, 3.0, 4.0]])), torch.tensor([[-2.0, 1.0, -4.0, 3.0]])
    )


def test_cosine_grid_is_exact_at_the_ends_and_symmetric():
    grid = CosineGrid()(8, 0.1, 0.9)
    assert grid.dtype == torch.float64 and grid.shape == (9,)
    assert float(grid[0]) == 0.1 and float(grid[-1]) == 0.9 and bool((grid.diff() > 0).all())
    torch.testing.assert_close(grid - 0.1, (0.9 - grid).flip(0))
    i = torch.arange(9, dtype=torch.float64)
    torch.testing.assert_close(grid, 0.1 + 0.8 * (1 - torch.cos(math.pi * i / 8)) / 2)


def test_ramp_guidance_is_cfg_at_the_weight_w_t_to_the_p():
    cond, uncond = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    ramp = RampGuidance(RampGuidance.Params(scale=2.0, power=2.0))
    weight = (2.0 * t**2)[:, None]
    torch.testing.assert_close(ramp.combine(cond, uncond, cond, t), (1 + weight) * cond - weight * uncond)
    assert torch.equal(ramp.combine(cond, uncond, cond, t)[0], cond[0])  # no guidance at the noise


def test_mean_gap_is_the_distance_between_means():
    reference = torch.randn(100, 2, 2)
    shift = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert MeanGap()(reference + shift, reference) == pytest.approx(5.0, rel=1e-6)
    assert MeanGap()(reference, reference) == 0.0


def test_pinned_cpu_sets_the_thread_count(threads_kept):
    backend = PinnedCPU(PinnedCPU.Params(threads=2))
    assert torch.get_num_threads() == 2 and backend.device == torch.device("cpu")


def test_beta_time_has_the_beta_moments():
    a, b, n = 3, 2, 200_000
    u = BetaTime(BetaTime.Params(a=a, b=b)).sample(n, torch.Generator().manual_seed(4), dtype=torch.float64)
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert float(u.min()) >= 0 and float(u.max()) <= 1
    assert float(u.mean()) == pytest.approx(mean, abs=5 * math.sqrt(var / n))
    assert float(u.var()) == pytest.approx(var, rel=0.02)


def test_mean_radius_of_the_unit_circle_is_one():
    angle = torch.linspace(0, 2 * math.pi, 50)
    assert MeanRadius()(torch.stack([angle.cos(), angle.sin()], 1)) == pytest.approx(1.0, rel=1e-6)


# --- together: pipelines ------------------------------------------------------------------------------


def ring_pipeline() -> dict:
    """Every example that fits one pipeline: the flowkit-made parts are only the simulator and the flow."""
    return {
        "run": {"seed": 0, "device": {"kind": "pinned-cpu", "threads": 1}},
        "data": {"kind": "gaussian-ring", "modes": 4},
        "path": {"kind": "scaled-linear", "scale": 1.5},
        "model": {"kind": "residual-mlp", "width": 32, "blocks": 1},
        "loss": {"kind": "weighted-velocity", "power": 1.0, "time": {"kind": "beta", "a": 2, "b": 2}},
        "train": {"steps": 20, "batch_size": 64, "log_every": 10},
        "sample": {"simulator": "euler", "dynamics": "flow", "grid": "cosine", "steps": 8, "n": 64},
        "evaluate": {"metric": "mean-gap", "n": 64},
        "summary": {"statistic": "mean-radius", "key": "mean_radius"},
    }


@pytest.mark.usefixtures("threads_kept")
def test_a_pipeline_of_the_examples_runs_end_to_end(tmp_path):
    manager = make_manager(plugins=[guide_examples], builtins=["simulators"])
    assert manager.problems == []
    done = load_pipeline(ring_pipeline(), manager=manager).run(out=tmp_path / "run")
    metrics = json.loads((done.directory / "metrics.json").read_text())
    samples = done.samples
    assert samples.shape == (64, 2) and bool(torch.isfinite(samples).all())
    assert metrics["mean_radius"] == pytest.approx(float(samples.norm(dim=1).mean()), rel=1e-5)
    assert metrics["distance"] >= 0


@pytest.mark.usefixtures("threads_kept")
def test_the_coupling_and_the_swirl_in_a_gaussian_pipeline():
    manager = make_manager(plugins=[guide_examples], builtins=["gaussian", "losses", "simulators", "devices"])
    pipe = {
        **ring_pipeline(),
        "path": {"kind": "gaussian", "schedule": "ot"},
        "loss": {"kind": "cfm", "coupling": "sorted", "time": "beta"},
        "sample": {"simulator": "heun", "dynamics": {"kind": "swirl", "swirl": 0.5}, "steps": 8, "n": 64},
    }
    del pipe["summary"]
    loaded = load_pipeline(pipe, manager=manager)
    assert isinstance(loaded.pipeline.sample.dynamics, SwirlFlow)
    losses = loaded.train()
    assert [step for step, _ in losses] == [10, 20] and all(math.isfinite(v) for _, v in losses)
    samples = loaded.sample(64)
    assert samples.shape == (64, 2) and bool(torch.isfinite(samples).all())


# --- relative paths --------------------------------------------------------------------------------


def csv_pipeline(path: str) -> dict:
    return {
        "data": {"kind": "csv-points", "path": path},
        "path": {"kind": "gaussian"},
        "model": {"kind": "residual-mlp", "width": 8},
        "loss": {"kind": "cfm"},
    }


def write_points(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "points.csv").write_text("0.5,1.5\n-1.0,2.0\n3.0,-0.5\n")
    return folder / "points.csv"


def test_a_relative_path_is_relative_to_the_pipeline_files_folder(tmp_path, monkeypatch):
    points = write_points(tmp_path / "project")
    pipe_file = tmp_path / "project" / "pipe.toml"
    pipe_file.write_text(
        '[data]\nkind = "csv-points"\npath = "points.csv"\n[path]\nkind = "gaussian"\n'
        '[model]\nkind = "residual-mlp"\n[loss]\nkind = "cfm"\n'
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    manager = make_manager(plugins=[guide_examples])
    dataset = build_pipeline(pipe_file, (), manager).dataset
    assert isinstance(dataset, CSVPoints) and dataset.shape == (2,)
    assert dataset.params.path == str(points.resolve())  # what the run's resolved pipeline.toml records
    # flowkit's own file dataset follows the same rule
    import numpy as np

    np.save(tmp_path / "project" / "points.npy", np.loadtxt(points, delimiter=",").astype("float32"))
    pipe_file.write_text(pipe_file.read_text().replace('"csv-points"', '"file"').replace(".csv", ".npy"))
    assert build_pipeline(pipe_file, (), manager).dataset.params.path == str(
        points.with_suffix(".npy").resolve()
    )


def test_a_relative_path_in_a_dict_pipeline_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    points = write_points(tmp_path / "project")
    manager = make_manager(plugins=[guide_examples])
    monkeypatch.chdir(tmp_path / "project")
    assert build_pipeline(csv_pipeline("points.csv"), (), manager).dataset.params.path == str(
        points.resolve()
    )
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "points.csv"
    with pytest.raises(
        FlowkitError, match=re.escape(f"file '{missing.relative_to(tmp_path)}' does not exist")
    ):
        build_pipeline(csv_pipeline("points.csv"), (), manager)


# --- what a loss receives ------------------------------------------------------------------------


@pytest.mark.usefixtures("threads_kept")
def test_the_loss_receives_its_model_role_around_the_prepared_network(manager):
    """Section 18: the module a loss is called with is ``model_role(network, path)``, built once."""
    from flowkit.engine.loop import TrainLoop

    pipe = build_pipeline(ring_pipeline(), (), manager)
    role = pipe.context.roles["velocity"]
    assert isinstance(role, AsVelocity) and role.network is pipe.network
    with TrainLoop(pipe) as loop:
        assert loop.role is role
