"""What a component returns is checked where the engine receives it: a wrong return is one line naming
the plugin, the component, the method and what was expected, not an AttributeError deep in the engine.

The case behind it: a simulator written against last month's contract called the now-abstract
``Simulator.simulate`` through ``super()``, which returns ``None``; ``flowkit run`` trained, then died
with ``'NoneType' object has no attribute 'cpu'``."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from flowkit_data.toy import Moons
from flowkit_gaussian.path import GaussianPath

from flowkit import hookimpl
from flowkit.engine import build_pipeline, run_pipeline
from flowkit.engine.sample import draw_samples
from flowkit.errors import PluginError
from flowkit.interfaces import Loss, Simulator
from flowkit.testing import make_manager


class OldEuler(Simulator):
    """Written against an older contract: its simulate defers to the base class (now abstract)."""

    def simulate(self, dynamics, x, ts, generator=None, progress=None):
        return super().simulate(dynamics, x, ts, generator, progress)  # type: ignore[safe-super]

    def simulate_trajectory(self, dynamics, x, ts, generator=None):
        return torch.zeros(len(ts), *x.shape)


class FlatMoons(Moons):
    """Returns its points flattened into one row: a shape the engine cannot train on."""

    def sample(self, n, generator=None, device=None):
        return super().sample(n, generator=generator, device=device).reshape(1, -1)


class ScalarLoss(Loss):
    """Returns a Python float, not a tensor."""

    trains = "velocity"

    def model_role(self, network, path):
        return network

    def __call__(self, model, path, z, generator=None, **keywords):
        return 0.5


class DetachedLoss(ScalarLoss):
    """Returns a tensor computed without the model: nothing to train."""

    def __call__(self, model, path, z, generator=None, **keywords):
        return (z**2).mean()


class HalfPrior(GaussianPath):
    """Draws half as many prior points as asked."""

    def sample_prior(self, shape, generator=None, device=None):
        return super().sample_prior((shape[0] // 2, *shape[1:]), generator=generator, device=device)


class Register:
    @staticmethod
    @hookimpl
    def flowkit_register(registry):
        registry.add("simulator", "old-euler", OldEuler)
        registry.add("dataset", "flat-moons", FlatMoons)
        registry.add("loss", "scalar", ScalarLoss)
        registry.add("loss", "detached", DetachedLoss)
        registry.add("path", "half-prior", HalfPrior)


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False, plugins=[("oldpkg", Register())])


def _pipeline(tmp_path, manager, *overrides):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY.format(out=(tmp_path / "runs" / "{name}").as_posix()))
    return build_pipeline(file, ["train.steps=2", "sample.trajectories=0", *overrides], manager)


def test_a_simulator_returning_none_is_named_with_its_plugin(tmp_path, manager):
    pipeline = _pipeline(tmp_path, manager, "sample.simulator=old-euler")
    with pytest.raises(PluginError) as err:
        draw_samples(pipeline, 200)
    assert str(err.value) == (
        "simulator 'old-euler' (plugin 'oldpkg'): simulate returned None; expected a tensor of shape "
        "(200, 2) (samples)"
    )


def test_a_dataset_returning_the_wrong_shape_is_named(tmp_path, manager):
    pipeline = _pipeline(tmp_path, manager, "data.kind=flat-moons")
    with pytest.raises(PluginError) as err:
        run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert str(err.value) == (
        "dataset 'flat-moons' (plugin 'oldpkg'): sample returned a tensor of shape (1, 128); expected a "
        "tensor of shape (64, 2) (a batch of data)"
    )


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (
            "scalar",
            "loss 'scalar' returned float; a loss returns a tensor of one element (the batch's mean loss) "
            "or a LossValue holding one",
        ),
        (
            "detached",
            "loss 'detached' returned a tensor that does not depend on the model's parameters (no "
            "gradient to train with); compute it from the model the loss receives",
        ),
    ],
)
def test_a_loss_returning_no_trainable_scalar_is_named(tmp_path, manager, loss, message):
    pipeline = _pipeline(tmp_path, manager, f"loss.kind={loss}")
    with pytest.raises(PluginError) as err:
        run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert str(err.value) == message


def test_a_path_drawing_the_wrong_number_of_prior_points_is_named_when_built(tmp_path, manager):
    # the build's check of the dynamics at the grid's times draws 4 prior points: the first draw of all
    with pytest.raises(PluginError) as err:
        _pipeline(tmp_path, manager, "path.kind=half-prior")
    assert str(err.value) == (
        "path 'half-prior' (plugin 'oldpkg'): sample_prior returned a tensor of shape (2, 2); expected "
        "a tensor of shape (4, 2) (draws of p_init)"
    )
