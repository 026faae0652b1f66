"""A class-conditional two-time model sampled by its average velocity (dynamics ``mean-flow``): the jump
uses the labels asked for, classifier-free guidance combines the conditional and unconditional averages
as it does velocities, and autoguidance, whose guide offers no average velocity, is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowkit.api import load_pipeline
from flowkit.engine.build import build_pipeline
from flowkit.engine.guidance import guided_dynamics
from flowkit.engine.records import sample_times
from flowkit.engine.sample import draw_samples
from flowkit.errors import ConfigError
from flowkit.interfaces import classifier_free
from flowkit.testing import make_manager

# The digits with a tiny conditional two-time MLP: random initial weights (nothing is trained), so the
# labels and guidance move the samples.
TINY = {
    "run": {"seed": 5},
    "data": {"kind": "digits"},
    "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
    "model": {"kind": "mlp", "hidden": [16, 16], "class_conditional": True, "second_time": True},
    "loss": {"kind": "meanflow"},
    "train": {"steps": 2, "batch_size": 8, "label_dropout": 0.2},
    "sample": {"simulator": "mean-flow-jump", "dynamics": "mean-flow", "steps": 1, "n": 20},
    "evaluate": {"n": 20},
}


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def _pipeline(manager, guidance=None, loss="meanflow"):
    sample = TINY["sample"] if guidance is None else {**TINY["sample"], "guidance": guidance}
    return build_pipeline({**TINY, "loss": {"kind": loss}, "sample": sample}, (), manager)


def _point(n=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn((n, 1, 8, 8), generator=g)
    t = torch.rand((n,), generator=g) * 0.5
    return x, t, t + 0.5 * torch.rand((n,), generator=g)


@pytest.mark.parametrize("loss", ["meanflow", "shortcut"])
def test_the_unguided_jump_is_the_average_velocity_at_the_labels_asked(manager, loss):
    """Catches labels dropped on the way to the average velocity (the null class used instead)."""
    pipeline = _pipeline(manager, loss=loss)
    x, t, r = _point()
    y = torch.tensor([0, 3, 9, 1, 1, 7])
    with torch.no_grad():
        average = guided_dynamics(pipeline, y).average(x, t, r)
        assert torch.equal(average, pipeline.network(x, t, y=y, r=r))
        assert not torch.equal(average, pipeline.network(x, t, r=r))  # the null class: another field
        x0, samples = draw_samples(pipeline, 20)
        labels = torch.arange(20) % 10  # [sample] guidance classes = "all" by default
        start, end = sample_times(pipeline, torch.device("cpu")).tolist()  # the path's t_range
        t0, t1 = torch.full((20,), start), torch.full((20,), end)
        one_jump = torch.addcmul(x0, (t1 - t0)[:, None, None, None], pipeline.network(x0, t0, y=labels, r=t1))
    assert torch.equal(samples, one_jump.clamp(-1, 1))


def test_guided_average_velocity_is_one_plus_w_conditional_minus_w_unconditional(manager):
    """Catches the scale ignored, or the unconditional half taken at another time r."""
    w = 2.0
    pipeline = _pipeline(manager, {"scale": w})
    x, t, r = _point()
    y = torch.tensor([2, 2, 5, 0, 8, 4])
    null = torch.full_like(y, 10)
    with torch.no_grad():
        guided = guided_dynamics(pipeline, y).average(x, t, r)
        expected = classifier_free(pipeline.network(x, t, y=y, r=r), pipeline.network(x, t, y=null, r=r), w)
        torch.testing.assert_close(guided, expected, rtol=1e-6, atol=1e-6)
        # The drift is the guided average over an empty interval: the guided velocity.
        drift = guided_dynamics(pipeline, y).drift(x, t)
        velocity = classifier_free(pipeline.network(x, t, y=y, r=t), pipeline.network(x, t, y=null, r=t), w)
    torch.testing.assert_close(drift, velocity, rtol=1e-6, atol=1e-6)


def test_autoguidance_of_the_average_velocity_is_one_clear_error(manager, tmp_path: Path):
    guide = load_pipeline(TINY, manager=manager).run(out=tmp_path / "guide").directory
    with pytest.raises(ConfigError) as error:
        _pipeline(manager, {"kind": "auto", "scale": 1.0, "guide": str(guide)})
    assert str(error.value) == (
        "<dict>: [sample] guidance ('auto'): dynamics 'mean-flow' are built from the model's "
        "'average-velocity', which a guide model does not offer; autoguidance guides only the 'velocity'"
    )
