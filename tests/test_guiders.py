"""Guiders (the kind ``guider``, ``[sample] guidance``): each reduces to classifier-free guidance bit for
bit when its knob is neutral, each guided drift equals its formula on a two-class Gaussian mixture with
exact fields, bad settings are one clear error, and a third-party guider registers like any component
(docs/math.md, "Guidance")."""

from __future__ import annotations

import pytest
import torch
from flowkit_gaussian.mixture import MixtureOracle
from flowkit_gaussian.path import GaussianPath
from flowkit_gaussian.schedules import OTSchedule
from torch import nn

from flowkit import hookimpl
from flowkit.engine.build import build_pipeline
from flowkit.engine.guidance import GuidedVelocity
from flowkit.engine.sample import draw_samples
from flowkit.errors import ConfigError
from flowkit.interfaces import BuildContext, Guider
from flowkit.testing import make_manager

# The digits with a tiny conditional MLP: random (not zero) initial weights, so guidance moves the
# samples; nothing is trained, the initial weights depend on the seed only.
TINY = {
    "run": {"seed": 5},
    "data": {"kind": "digits"},
    "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
    "model": {"kind": "mlp", "hidden": [16, 16], "class_conditional": True},
    "loss": {"kind": "cfm"},
    "train": {"steps": 1, "batch_size": 8, "label_dropout": 0.2},
    "sample": {"simulator": "heun", "steps": 4, "n": 24, "trajectories": 0},
    "evaluate": {"n": 24},
}


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def _samples(manager, guidance):
    pipeline = build_pipeline({**TINY, "sample": {**TINY["sample"], "guidance": guidance}}, (), manager)
    return draw_samples(pipeline, 24)[1]


NEUTRAL = {
    "interval": {"t_lo": 0.0, "t_hi": 1.0},
    "apg": {"eta": 1.0, "norm_threshold": 0.0, "momentum": 0.0},
    "cfg-zero-star": {"optimized": False, "zero_init_steps": 0},
    "rescale": {"phi": 0.0},
}


@pytest.mark.parametrize("kind", sorted(NEUTRAL))
def test_each_guider_with_its_knob_neutral_samples_bitwise_like_cfg(manager, kind):
    cfg = _samples(manager, {"scale": 2.0, "classes": "all"})  # no kind: cfg, as before guiders
    assert torch.equal(cfg, _samples(manager, {"kind": "cfg", "scale": 2.0}))
    assert not torch.equal(cfg, _samples(manager, {"scale": 0.0}))  # guidance moves the samples
    assert torch.equal(cfg, _samples(manager, {"kind": kind, "scale": 2.0, **NEUTRAL[kind]}))


KNOBS = {
    "interval": {"t_lo": 0.3, "t_hi": 0.7},
    "apg": {"eta": 0.0},
    "cfg-zero-star": {"zero_init_steps": 1},
    "rescale": {"phi": 0.7},
    "cfg++": {"lam": 0.5},
}


@pytest.mark.parametrize("kind", sorted(KNOBS))
def test_each_guider_with_its_knob_set_samples_otherwise_than_cfg(manager, kind):
    cfg = _samples(manager, {"scale": 2.0})
    extra = {} if kind == "cfg++" else {"scale": 2.0}
    assert not torch.equal(cfg, _samples(manager, {"kind": kind, **extra, **KNOBS[kind]}))


# ---------------------------------------------------------------------------------------------------
# Exactness: the guided drift of exact conditional fields equals each guider's formula
# ---------------------------------------------------------------------------------------------------

MEANS = [[-1.5, 0.5], [1.0, -0.5]]
COVS = [[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]]]
NULL = 2


class ExactConditional(nn.Module):
    """The exact velocity of the OT path from class 0, class 1, or (the null label) their 1:3 mixture."""

    def __init__(self) -> None:
        super().__init__()
        schedule = OTSchedule()
        one = torch.tensor([1.0])
        self.classes = nn.ModuleList(
            MixtureOracle(one, torch.tensor([m]), torch.tensor([c]), schedule)
            for m, c in zip(MEANS, COVS, strict=True)
        )
        self.mixture = MixtureOracle(
            torch.tensor([0.25, 0.75]), torch.tensor(MEANS), torch.tensor(COVS), schedule
        )

    def forward(self, x, t, y):
        fields = [self.classes[0].velocity(x, t), self.classes[1].velocity(x, t), self.mixture.velocity(x, t)]
        return torch.stack(fields)[y, torch.arange(len(y))]


def _guider(manager, kind, **params):
    cls = manager.registry.get("guider", kind).cls
    path = GaussianPath(GaussianPath.Params(schedule=OTSchedule()))
    return cls.from_params(cls.Params(**params), BuildContext(path=path))


def _drift(manager, guider, x, t, y):
    """The drift of the ``flow`` dynamics built on the guided exact velocity."""
    guided = GuidedVelocity(ExactConditional(), null=NULL, guider=guider)
    flow = manager.registry.get("dynamics", "flow").cls
    path = GaussianPath(GaussianPath.Params(schedule=OTSchedule()))
    dynamics = flow.from_params(flow.Params(), BuildContext(path=path, roles={"velocity": guided}))
    guided.labels = y
    return dynamics, guided


def _points(n=64):
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x, t, torch.arange(n) % 2


def _fields(x, t, y):
    exact = ExactConditional()
    return exact(x, t, y), exact(x, t, torch.full_like(y, NULL))


W = 1.7


def _close(a, b):
    assert (a - b).abs().max().item() <= 1e-6 * (1 + b.abs().max().item())


def test_cfg_drift_is_one_plus_w_conditional_minus_w_unconditional(manager):
    x, t, y = _points()
    c, u = _fields(x, t, y)
    dynamics, _ = _drift(manager, _guider(manager, "cfg", scale=W), x, t, y)
    _close(dynamics.drift(x, t), (1 + W) * c - W * u)


def test_interval_drift_is_cfg_inside_the_band_and_conditional_outside(manager):
    x, t, y = _points()
    c, u = _fields(x, t, y)
    dynamics, _ = _drift(manager, _guider(manager, "interval", scale=W, t_lo=0.25, t_hi=0.6), x, t, y)
    inside = ((t >= 0.25) & (t <= 0.6))[:, None]
    assert inside.any() and not inside.all()
    _close(dynamics.drift(x, t), torch.where(inside, (1 + W) * c - W * u, c))


def _apg(c, d, eta, w, r):
    if r > 0:
        norm = d.norm(dim=1, keepdim=True)
        d = d * torch.clamp(r / norm, max=1.0)
    unit = c / c.norm(dim=1, keepdim=True)
    parallel = (d * unit).sum(dim=1, keepdim=True) * unit
    return (d - parallel) + eta * parallel, d


def test_apg_drift_projects_the_running_update_as_the_paper_does(manager):
    x, t, y = _points()
    eta, r, beta = 0.3, 0.8, -0.5
    guider = _guider(manager, "apg", scale=W, eta=eta, norm_threshold=r, momentum=beta)
    dynamics, guided = _drift(manager, guider, x, t, y)
    t2 = (t + 0.01).clamp(max=1.0)
    c1, u1 = _fields(x, t, y)
    c2, u2 = _fields(x, t2, y)
    first, second = dynamics.drift(x, t), dynamics.drift(x, t2)
    update1, _ = _apg(c1, c1 - u1, eta, W, r)
    update2, _ = _apg(c2, (c2 - u2) + beta * (c1 - u1), eta, W, r)  # the running update, before the threshold
    _close(first, u1 + (1 + W) * update1)
    _close(second, u2 + (1 + W) * update2)
    guided.labels = y  # a new simulation forgets the running update
    _close(dynamics.drift(x, t2), u2 + (1 + W) * _apg(c2, c2 - u2, eta, W, r)[0])


def test_cfg_zero_star_drift_scales_the_unconditional_field_and_zeroes_the_first_steps(manager):
    x, t, y = _points()
    c, u = _fields(x, t, y)
    guider = _guider(manager, "cfg-zero-star", scale=W, zero_init_steps=2)
    guider.prepare(torch.linspace(0.0, 1.0, 11, dtype=torch.float64))  # zero before t = 0.2
    dynamics, _ = _drift(manager, guider, x, t, y)
    s = (c * u).sum(dim=1, keepdim=True) / ((u * u).sum(dim=1, keepdim=True) + 1e-8)
    expected = torch.where((t < 0.2)[:, None], torch.zeros_like(c), (1 + W) * c - W * s * u)
    assert (t < 0.2).any() and not (t < 0.2).all()
    _close(dynamics.drift(x, t), expected)


def test_rescale_drift_mixes_cfg_rescaled_to_the_conditional_std(manager):
    x, t, y = _points()
    c, u = _fields(x, t, y)
    phi = 0.6
    dynamics, _ = _drift(manager, _guider(manager, "rescale", scale=W, phi=phi), x, t, y)
    g = (1 + W) * c - W * u
    ratio = c.std(dim=1, unbiased=True, keepdim=True) / g.std(dim=1, unbiased=True, keepdim=True)
    _close(dynamics.drift(x, t), phi * g * ratio + (1 - phi) * g)


def test_cfg_plus_plus_drift_is_cfg_at_the_step_dependent_scale_on_the_ot_path(manager):
    lam = 0.4
    grid = torch.linspace(0.0, 1.0, 9, dtype=torch.float64)
    x, _, y = _points(16)
    t = grid[torch.arange(16) % 8]  # every time of the grid but the last
    c, u = _fields(x, t, y)
    guider = _guider(manager, "cfg++", lam=lam)
    guider.prepare(grid)
    dynamics, _ = _drift(manager, guider, x, t, y)
    t_next = t + 0.125
    weight = (lam * (1 - t) * t_next / (t_next - t))[:, None]
    _close(dynamics.drift(x, t), u + weight * (c - u))
    # one Euler step lands where CFG++ renoises: the data guided at lambda, the noise unconditional
    x_next = x + (t_next - t)[:, None] * dynamics.drift(x, t)
    data, noise = x + (1 - t)[:, None] * (u + lam * (c - u)), x - t[:, None] * u
    _close(x_next, t_next[:, None] * data + (1 - t_next)[:, None] * noise)


# ---------------------------------------------------------------------------------------------------
# Errors and third-party guiders
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("guidance", "message"),
    [
        (
            {"kind": "interval", "scale": 1.0, "t_lo": 0.8, "t_hi": 0.2},
            r"^<dict>: \[sample.guidance\]: invalid parameters: "
            r"t_hi = 0.2 must not be below t_lo = 0.8$",
        ),
        ({"kind": "cfg++", "lam": 1.5}, r"\[sample.guidance\] key 'lam': invalid value 1.5"),
        (
            {"kind": "cfg-zero-star", "scale": 1.0, "zero_init_steps": 4},
            r"^<dict>: \[sample\] guidance \('cfg-zero-star'\): "
            r"zero_init_steps = 4 would zero all 4 steps",
        ),
        ({"kind": "cfgg", "scale": 1.0}, r"\[sample.guidance\] key 'kind'.*cfg"),
    ],
)
def test_bad_guider_settings_are_one_clear_error(manager, guidance, message):
    with pytest.raises(ConfigError, match=message):
        _samples(manager, guidance)


def test_cfg_plus_plus_refuses_an_adaptive_simulator(manager):
    spec = {**TINY, "sample": {**TINY["sample"], "simulator": "dopri5", "guidance": {"kind": "cfg++"}}}
    with pytest.raises(ConfigError, match=r"\[sample\] guidance \('cfg\+\+'\): cfg\+\+ steps from one time"):
        build_pipeline(spec, (), manager)


class Sharpen(Guider):
    """A third-party guider: the conditional field, doubled."""

    def combine(self, cond, uncond, x, t):
        return 2.0 * cond


class SharpenPlugin:
    @hookimpl
    def flowkit_register(self, registry):
        registry.add("guider", "sharpen", Sharpen)


def test_a_third_party_guider_registers_and_guides_like_a_builtin():
    manager = make_manager(plugins=[("sharpen", SharpenPlugin())], warn=False)
    guidance = {"kind": "sharpen", "scale": 1.0}
    pipeline = build_pipeline({**TINY, "sample": {**TINY["sample"], "guidance": guidance}}, (), manager)
    assert isinstance(pipeline.sample.guidance, Sharpen)
    x = torch.randn(6, 1, 8, 8)
    t = torch.full((6,), 0.5)
    guided = pipeline.guidance.field
    guided.labels = torch.arange(6) % 3
    conditional = pipeline.context.roles["velocity"](x, t, y=torch.arange(6) % 3)
    assert torch.equal(guided(x, t), 2.0 * conditional)
