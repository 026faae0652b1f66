"""Autoguidance (the guider ``auto``): the guide is a weaker trained run or a checkpoint of one, loaded
when the pipeline is built; at weight 0 (Karras' w = 1) the samples are the plain model's bit for
bit; the guided field is ``D + w (D - D_guide)`` with the guide's own weights; it guides unconditional
and conditional models; bad guides are one clear error (docs/math.md, "Autoguidance")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowkit.api import load_pipeline
from flowkit.engine.build import build_pipeline
from flowkit.engine.checkpoints import list_checkpoints, load_weights
from flowkit.engine.sample import draw_samples
from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import classifier_free
from flowkit.testing import make_manager

MOONS = {
    "run": {"seed": 3},
    "data": {"kind": "moons"},
    "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
    "model": {"kind": "mlp", "hidden": [16, 16]},
    "loss": {"kind": "cfm"},
    "train": {"steps": 4, "batch_size": 16, "checkpoint_every": 2, "keep_checkpoints": 0},
    "sample": {"simulator": "heun", "steps": 4, "n": 32, "trajectories": 0},
    "evaluate": {"n": 32},
}
DIGITS = {
    **MOONS,
    "data": {"kind": "digits"},
    "model": {"kind": "mlp", "hidden": [16], "class_conditional": True},
    "train": {**MOONS["train"], "label_dropout": 0.2},
}


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def _run(manager, spec, out: Path) -> Path:
    return load_pipeline(spec, manager=manager).run(out=out).directory


@pytest.fixture(scope="module")
def guide_run(manager, tmp_path_factory) -> Path:
    """A moons run of 4 steps, checkpoints at steps 2 and 4: the weak model."""
    return _run(manager, MOONS, tmp_path_factory.mktemp("guide") / "moons-short")


def _with(spec, guidance, seed=5):
    return {**spec, "run": {"seed": seed}, "sample": {**spec["sample"], "guidance": guidance}}


def test_weight_zero_is_the_plain_model_bitwise(manager, guide_run):
    plain = draw_samples(build_pipeline({**MOONS, "run": {"seed": 5}}, (), manager), 32)[1]
    auto = build_pipeline(_with(MOONS, {"kind": "auto", "scale": 0.0, "guide": str(guide_run)}), (), manager)
    assert auto.guidance is not None  # the unconditional model is guided: the dynamics are rebuilt
    assert torch.equal(draw_samples(auto, 32)[1], plain)
    moved = build_pipeline(_with(MOONS, {"kind": "auto", "scale": 1.0, "guide": str(guide_run)}), (), manager)
    assert not torch.equal(draw_samples(moved, 32)[1], plain)


def _guide_network(manager, run: Path, weights: Path):
    """The guide's network rebuilt by hand from its run's pipeline and the given weights."""
    guide = build_pipeline(run / "pipeline.toml", (), manager)
    load_weights(weights, guide.network)
    return guide.network.eval()


@pytest.mark.parametrize("which", ["run", "checkpoint"])
def test_guided_field_is_the_model_plus_w_times_its_lead_over_the_guide(manager, guide_run, which):
    w = 1.5
    first = list_checkpoints(guide_run)[0][1]  # step 2, not the final weights
    named, weights = (guide_run, guide_run / "model.pt") if which == "run" else (first, first)
    pipeline = build_pipeline(_with(MOONS, {"kind": "auto", "scale": w, "guide": str(named)}), (), manager)
    network, guide = pipeline.network, _guide_network(manager, guide_run, weights)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    t = torch.rand(64, generator=torch.Generator().manual_seed(1))
    pipeline.guidance.field.labels = None
    with torch.no_grad():
        guided = pipeline.guidance.field(x, t)
        good, bad = network(x, t), guide(x, t)
    assert torch.equal(guided, classifier_free(good, bad, w))
    by_hand = (1 + w) * good - w * bad  # Karras: w_K D_1 + (1 - w_K) D_0 with w_K = 1 + w
    torch.testing.assert_close(guided, by_hand, rtol=0, atol=1e-6)
    other = first if which == "run" else guide_run / "model.pt"  # the other weights give another field
    elsewhere = _guide_network(manager, guide_run, other)(x, t)
    assert not torch.allclose(guided, classifier_free(good, elsewhere, w))


def test_a_conditional_model_is_guided_by_a_conditional_guide_with_the_same_labels(manager, tmp_path):
    guide_run = _run(manager, DIGITS, tmp_path / "digits-short")
    w = 2.0
    spec = _with(DIGITS, {"kind": "auto", "scale": w, "guide": str(guide_run)})
    pipeline = build_pipeline(spec, (), manager)
    guide = _guide_network(manager, guide_run, guide_run / "model.pt")
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t, y = torch.full((10,), 0.5), torch.arange(10)
    pipeline.guidance.field.labels = y
    with torch.no_grad():
        guided = pipeline.guidance.field(x, t)
        expected = classifier_free(pipeline.network(x, t, y=y), guide(x, t, y=y), w)
    assert torch.equal(guided, expected)
    # The null class asks both models for unconditional fields, and is guided too.
    null = torch.full((10,), 10)
    pipeline.guidance.field.labels = null
    with torch.no_grad():
        expected = classifier_free(pipeline.network(x, t, y=null), guide(x, t, y=null), w)
        assert torch.equal(pipeline.guidance.field(x, t), expected)


def test_a_relative_guide_is_resolved_against_the_pipeline_file(manager, guide_run, tmp_path):
    import shutil

    shutil.copytree(guide_run, tmp_path / "runs" / "weak")
    lines = [
        '[data]\nkind = "moons"',
        '[path]\nkind = "gaussian"\nschedule = { kind = "ot" }',
        '[loss]\nkind = "cfm"',
        '[model]\nkind = "mlp"\nhidden = [16, 16]',
        "[train]\nsteps = 1\nbatch_size = 8",
        '[sample]\nsteps = 2\nn = 8\nguidance = { kind = "auto", scale = 1.0, guide = "runs/weak" }',
        "[evaluate]\nn = 8",
    ]
    source = tmp_path / "pipeline.toml"
    source.write_text("\n".join(lines) + "\n")
    pipeline = build_pipeline(source, (), manager)
    assert pipeline.sample.guidance.params.guide == str((tmp_path / "runs" / "weak").resolve())


@pytest.mark.parametrize(
    ("guidance", "message"),
    [
        ({"kind": "auto", "scale": 1.0}, "guider 'auto' needs guide = the run directory or checkpoint"),
        (
            {"kind": "auto", "scale": 1.0, "guide": "/nonexistent/run"},
            "<dict>: [sample] guidance guide: /nonexistent/run: no such run directory or checkpoint",
        ),
        ({"scale": 1.0}, "[sample] guidance: model 'mlp' is not conditional"),
    ],
)
def test_bad_guides_are_one_clear_error(manager, guidance, message):
    with pytest.raises(FlowkitError) as caught:
        build_pipeline(_with(MOONS, guidance), (), manager)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_guide_on_other_data_or_classes_is_refused(manager, guide_run):
    spec = _with(DIGITS, {"kind": "auto", "scale": 1.0, "guide": str(guide_run)})
    with pytest.raises(ConfigError, match=r"models data of shape \(2,\), the model \(1, 8, 8\)"):
        build_pipeline(spec, (), manager)


def test_the_guidance_interval_guides_inside_the_band_and_leaves_the_model_outside(manager, guide_run):
    """``t_lo``/``t_hi``: the guided field on the band, the model's own field outside; the full band is
    the unbanded guider bitwise (its samples)."""
    w, band = 2.0, {"t_lo": 0.5, "t_hi": 0.8}
    guided = build_pipeline(
        _with(MOONS, {"kind": "auto", "scale": w, "guide": str(guide_run), **band}), (), manager
    )
    guide = _guide_network(manager, guide_run, guide_run / "model.pt")
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 0.49, 0.5, 0.7, 0.8, 0.81])
    guided.guidance.field.labels = None
    with torch.no_grad():
        field, model = guided.guidance.field(x, t), guided.network(x, t)
        inside = classifier_free(model, guide(x, t), w)
    expected = torch.where(((t >= 0.5) & (t <= 0.8))[:, None], inside, model)
    assert torch.equal(field, expected)
    full = {"kind": "auto", "scale": w, "guide": str(guide_run), "t_lo": 0.0, "t_hi": 1.0}
    plain = {"kind": "auto", "scale": w, "guide": str(guide_run)}
    samples = [draw_samples(build_pipeline(_with(MOONS, g), (), manager), 32)[1] for g in (full, plain)]
    assert torch.equal(*samples)
    with pytest.raises(ConfigError, match=r"t_hi = 0.2 must not be below t_lo = 0.5"):
        build_pipeline(_with(MOONS, {**plain, "t_lo": 0.5, "t_hi": 0.2}), (), manager)
