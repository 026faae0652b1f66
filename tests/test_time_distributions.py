"""The time distribution is a kind of its own: built-ins ``uniform`` and ``logit-normal`` draw bitwise
what ``t_sampling`` drew, the older keys still work, and a third-party distribution feeds ``cfm``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flowkit import hookimpl
from flowkit.engine.build import build_pipeline
from flowkit.errors import CapabilityError
from flowkit.interfaces import TimeDistribution


class HalfTime(TimeDistribution):
    """Every training time at the middle of ``[0, 1]``; draws nothing."""

    def sample(self, n, generator=None, device=None, dtype=torch.float32) -> Tensor:
        return torch.full((n,), 0.5, device=device, dtype=dtype)


class TimePlugin:
    @staticmethod
    @hookimpl
    def flowkit_register(registry):
        registry.add("time", "half", HalfTime)


def pipeline(loss):
    return {
        "data": "moons",
        "path": {"kind": "gaussian", "schedule": "vp"},
        "model": {"kind": "mlp", "hidden": [8]},
        "loss": loss,
    }


def reference_times(n, t_range, how, mean, std, generator):
    """The draws of the former ``t_sampling`` helper, written out."""
    lo, hi = t_range
    if how == "uniform":
        unit = torch.rand((n,), generator=generator)
    else:
        unit = torch.sigmoid(mean + std * torch.randn((n,), generator=generator))
    return lo + (hi - lo) * unit


@pytest.mark.parametrize("kind", ["cfm", "dsm"])
@pytest.mark.parametrize(
    ("time", "old"),
    [
        ("uniform", {}),
        ({"kind": "logit-normal", "mean": 0.3, "std": 1.7}, {}),
        ("uniform", {"t_sampling": "logit-normal", "logit_mean": 0.3, "logit_std": 1.7}),
    ],
)
def test_the_draws_are_those_of_t_sampling(flowkit_manager, kind, time, old):
    built = build_pipeline(pipeline({"kind": kind, "time": time, **old}), manager=flowkit_manager())
    how = "uniform" if time == "uniform" and not old else "logit-normal"
    drawn = built.loss.sample_times(64, built.path, torch.Generator().manual_seed(3))
    expected = reference_times(64, built.path.t_range, how, 0.3, 1.7, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, expected)


def test_a_third_party_time_distribution_feeds_cfm(flowkit_manager):
    manager = flowkit_manager(plugins=[("time-test", TimePlugin)])
    built = build_pipeline(pipeline({"kind": "cfm", "time": "half"}), manager=manager)
    lo, hi = built.path.t_range
    drawn = built.loss.sample_times(5, built.path, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, torch.full((5,), lo + (hi - lo) * 0.5))


def test_time_and_t_sampling_together_are_refused(flowkit_manager):
    manager = flowkit_manager(plugins=[("time-test", TimePlugin)])
    with pytest.raises(CapabilityError) as refused:
        build_pipeline(
            pipeline({"kind": "cfm", "time": "half", "t_sampling": "logit-normal"}), manager=manager
        )
    assert str(refused.value) == (
        "<dict>: [loss]: loss 'cfm' sets both time (kind 'half') and t_sampling = 'logit-normal'; keep one: "
        'time = { kind = "logit-normal", mean = 0.0, std = 1.0 }'
    )
