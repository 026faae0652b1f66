"""A schedule whose ends make the loss singular is refused when the pipeline is built, not after
training: the README's own ``Linear`` schedule (``beta_t = 1 - t``, default ``t_range = (0, 1)``) with
``dsm`` used to train to the end and then give only non-finite samples."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from flowkit import hookimpl
from flowkit.engine import build_pipeline
from flowkit.errors import CapabilityError
from flowkit.interfaces import Schedule
from flowkit.testing import make_manager


class Linear(Schedule):
    """alpha_t = t, beta_t = 1 - t (the README's example, without a t_range)."""

    def alpha(self, t):
        return t

    def beta(self, t):
        return 1 - t

    def d_alpha(self, t):
        return torch.ones_like(t)

    def d_beta(self, t):
        return -torch.ones_like(t)


class Edged(Linear):
    t_range = (0.0, 1.0 - 1e-5)


class Register:
    @staticmethod
    @hookimpl
    def flowkit_register(registry):
        registry.add("schedule", "linear", Linear)
        registry.add("schedule", "edged", Edged)


def _build(tmp_path, schedule: str, loss: str):
    text = TINY.format(out=(tmp_path / "runs" / "{name}").as_posix())
    text = text.replace(
        'schedule = { kind = "ot" }',
        f'schedule = {{ kind = "{schedule}" }}',
    )
    text = text.replace('kind = "cfm"', f'kind = "{loss}"')
    file = tmp_path / "linear.toml"
    file.write_text(text)
    return build_pipeline(file, (), make_manager(warn=False, plugins=[("linear", Register())]))


def test_a_schedule_with_beta_zero_at_its_end_is_refused_with_dsm_when_built(tmp_path):
    with pytest.raises(CapabilityError) as err:
        _build(tmp_path, "linear", "dsm")
    assert str(err.value).endswith(
        "loss 'dsm': schedule 'linear' has beta_t = 0 at t = 1, an end of its t_range [0, 1]; the score "
        "dsm trains divides by beta_t, so the samples would not be finite: give the schedule a t_range "
        'where beta_t > 0 (e.g. t_range = (0.0, 1.0 - 1e-5)) or use [loss] kind = "cfm"'
    )


def test_the_same_schedule_builds_with_a_regular_t_range_or_with_cfm(tmp_path):
    _build(tmp_path, "edged", "dsm")
    _build(tmp_path, "linear", "cfm")


def _sampled_with(tmp_path, schedule: str, dynamics: str):
    text = TINY.format(out=(tmp_path / "runs" / "{name}").as_posix())
    text = text.replace('schedule = { kind = "ot" }', f'schedule = {{ kind = "{schedule}" }}')
    text = text.replace('simulator = "euler"', f'simulator = "euler-maruyama"\ndynamics = "{dynamics}"')
    file = tmp_path / "sde.toml"
    file.write_text(text)
    return build_pipeline(file, (), make_manager(warn=False, plugins=[("linear", Register())]))


def test_dynamics_singular_where_the_sampler_steps_are_refused_when_built(tmp_path):
    # Langevin's drift divides by beta_t = 1 - t ... and by alpha_t = t: at t = 0, where every simulator
    # takes its first step, it is not finite.
    with pytest.raises(CapabilityError) as err:
        _sampled_with(tmp_path, "linear", "langevin")
    assert str(err.value) == (
        f"{tmp_path / 'sde.toml'}: [sample]: dynamics 'langevin' are not finite at t = 0 of the grid, for "
        "path 'gaussian' with schedule 'linear': sampling would give only non-finite values; use other "
        "dynamics, or a schedule whose t_range stops short of its singular end"
    )


def test_dynamics_singular_only_at_the_last_time_build_and_sample_finite_values(tmp_path):
    # The extension SDE's drift is not finite at t = 1 (beta_t = 0), where Euler-Maruyama never evaluates.
    from flowkit.engine.sample import draw_samples

    pipeline = _sampled_with(tmp_path, "linear", "extension-sde")
    assert bool(torch.isfinite(draw_samples(pipeline, 16)[1]).all())
