"""Pipeline files → components: every error names the file, the table and key, found and expected."""

from __future__ import annotations

import attrs
import pytest
import torch
from conftest import SHORTHAND

from flowkit import hookimpl
from flowkit.config import apply_overrides, parse_override, read_toml
from flowkit.engine import build_pipeline
from flowkit.errors import CapabilityError, ConfigError
from flowkit.interfaces import Component, TimeGrid
from flowkit.params import component
from flowkit.registry import PluginManager
from flowkit.testing import make_manager

BASE = """
[data]
kind = "moons"

[path]
kind = "gaussian"
schedule = { kind = "ot", sigma_min = 0.0 }

[model]
kind = "mlp"
hidden = [16]

[loss]
kind = "cfm"

[train]
steps = 10
"""


@pytest.fixture(scope="module")
def manager():
    return make_manager()


def error_of(write_pipeline, manager, text, overrides=()):
    path = write_pipeline(text)
    with pytest.raises(ConfigError) as err:
        build_pipeline(path, overrides, manager)
    return str(err.value).replace(str(path), "FILE")


def test_valid_file_builds_every_component(write_pipeline, manager):
    pipe = build_pipeline(write_pipeline(BASE), (), manager)
    assert pipe.path.params.schedule.registered_name == "ot"
    assert pipe.model.params.hidden == [16]
    assert pipe.train.steps == 10 and pipe.train.lr == 1e-3  # defaults filled in
    assert pipe.sample.simulator.registered_name == "heun"
    assert "velocity" in pipe.context.roles


def test_missing_table(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE.replace('[data]\nkind = "moons"', ""))
    assert msg.startswith(
        "FILE: missing table [data]; add one naming a registered dataset, e.g. [data] kind = "
    )
    assert "moons" in msg


def test_unknown_key_suggests_the_nearest(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE.replace("steps = 10", "stpes = 10"))
    assert msg.startswith("FILE: [train] key 'stpes': unknown key. Did you mean 'steps'? Valid keys: steps, ")


def test_unknown_key_in_a_nested_component(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE.replace("sigma_min = 0.0", "sigma_mim = 0.0"))
    assert msg.startswith("FILE: [path.schedule] key 'sigma_mim': unknown key. Did you mean 'sigma_min'?")


def test_wrong_type(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE.replace("steps = 10", 'steps = "many"'))
    assert msg == "FILE: [train] key 'steps': expected an integer, found \"many\" (a string)"
    msg = error_of(write_pipeline, manager, BASE.replace("hidden = [16]", 'hidden = [16, "wide"]'))
    assert msg == "FILE: [model.hidden] key '1': expected an integer, found \"wide\" (a string)"
    msg = error_of(write_pipeline, manager, BASE.replace("sigma_min = 0.0", "sigma_min = true"))
    assert msg == "FILE: [path.schedule] key 'sigma_min': expected a number, found True (a boolean)"


def test_validator_names_the_key(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE.replace("steps = 10", "steps = 0"))
    assert msg == "FILE: [train] key 'steps': invalid value 0: 'steps' must be > 0: 0"


def test_a_seed_outside_what_torch_and_numpy_accept_is_refused_by_key(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, "[run]\nseed = -1\n" + BASE)
    assert msg == "FILE: [run] key 'seed': invalid value -1: 'seed' must be >= 0: -1"
    msg = error_of(write_pipeline, manager, f"[run]\nseed = {2**80}\n" + BASE)
    assert msg == f"FILE: [run] key 'seed': invalid value {2**80}: 'seed' must be < {2**64}: {2**80}"


def test_choice_with_suggestion(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE + 'lr_schedule = "cosin"\n')
    assert msg == (
        "FILE: [train] key 'lr_schedule': expected one of 'constant', 'cosine', "
        "found \"cosin\" (a string). Did you mean 'cosine'?"
    )


def test_unknown_kind_suggests_the_nearest(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE.replace('kind = "ot"', 'kind = "otx"'))
    known = ", ".join(manager.registry.names("schedule"))
    assert msg == (
        f"FILE: [path.schedule] key 'kind': unknown schedule 'otx'. Did you mean 'ot'? "
        f"Known schedules: {known}"
    )


def test_component_table_without_kind(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE.replace('kind = "cfm"', ""))
    assert msg.startswith("FILE: [loss] key 'kind': missing required key: the loss to use (one of: cfm, ")
    assert ", dsm, " in msg  # every registered loss, sorted (plugins add theirs between)


def test_unknown_table(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE + "\n[sampel]\nsteps = 3\n")
    assert msg.startswith("FILE: unknown table [sampel]. Did you mean 'sample'? Valid tables: flowkit, run, ")


def test_bad_toml_syntax_reports_its_line(write_pipeline, manager):
    msg = error_of(write_pipeline, manager, BASE.replace("steps = 10", "steps = = 10"))
    assert msg.startswith("FILE: invalid TOML: ")
    assert "line 17" in msg


def test_missing_file(tmp_path, manager):
    with pytest.raises(ConfigError, match=r"nope\.toml: no such pipeline file"):
        build_pipeline(tmp_path / "nope.toml", (), manager)


def test_overrides_are_applied_and_validated_the_same_way(write_pipeline, manager):
    path = write_pipeline(BASE)
    pipe = build_pipeline(
        path,
        ["train.steps=5", "sample.simulator=euler", "model.hidden=[8, 8]", "path.schedule.sigma_min=0.01"],
        manager,
    )
    assert pipe.train.steps == 5
    assert pipe.sample.simulator.registered_name == "euler"
    assert pipe.model.params.hidden == [8, 8]
    assert pipe.path.params.schedule.params.sigma_min == 0.01
    msg = error_of(write_pipeline, manager, BASE, ["train.stesp=5"])
    assert msg.startswith("FILE: [train] key 'stesp' (from --set): unknown key. Did you mean 'steps'?")
    msg = error_of(write_pipeline, manager, BASE, ["train.steps=abc"])
    assert msg == "FILE: [train] key 'steps' (from --set): expected an integer, found \"abc\" (a string)"


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"--set steps: expected TABLE.KEY=VALUE, e.g. --set train.steps="):
        parse_override("steps")
    parsed = parse_override("sample.simulator={ kind = 'euler' }")
    assert parsed == (("sample", "simulator"), {"kind": "euler"})
    assert parse_override("data.kind=circles") == (("data", "kind"), "circles")
    with pytest.raises(ConfigError, match=r"'train.steps' is a value \(10 \(an integer\)\), not a table"):
        apply_overrides({"train": {"steps": 10}}, ["train.steps.x=1"], "f.toml")


def test_capability_errors_are_raised_at_build_time(write_pipeline, manager):
    path = write_pipeline(BASE + '\n[sample]\nsimulator = "heun"\ndynamics = { kind = "extension-sde" }\n')
    with pytest.raises(CapabilityError) as err:
        build_pipeline(path, (), manager)
    msg = str(err.value).replace(str(path), "FILE")
    assert msg.startswith(
        "FILE: [sample]: simulator 'heun' integrates an ODE, but dynamics 'extension-sde' is an SDE"
    )


def test_resolved_pipeline_round_trips(write_pipeline, manager, tmp_path):
    import tomli_w

    pipe = build_pipeline(write_pipeline(BASE), (), manager)
    resolved = pipe.resolved(manager)
    assert resolved["path"]["schedule"] == {"kind": "ot", "sigma_min": 0.0}
    assert resolved["flowkit"]["plugins"]["gaussian"] == "flowkit 0.1.0"
    again_path = tmp_path / "resolved.toml"
    again_path.write_text(tomli_w.dumps(resolved))
    again = build_pipeline(again_path, (), manager)
    assert again.resolved(manager) | {"flowkit": None} == resolved | {"flowkit": None}
    assert read_toml(again_path)["train"]["steps"] == 10


def test_non_finite_and_oversized_numbers_are_config_errors(write_pipeline, manager):
    path = write_pipeline(SHORTHAND)
    for override, expected in [
        ("train.lr=inf", "[train] key 'lr' (from --set): expected a finite number, found inf"),
        ("loss.logit_mean=nan", "[loss] key 'logit_mean' (from --set): expected a finite number, found nan"),
        (
            "train.lr=1" + "0" * 400,
            "[train] key 'lr' (from --set): expected a number, found an integer of 401 digits",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            build_pipeline(path, [override], manager)
        assert str(err.value) == f"{path}: {expected}"


def test_set_reaches_into_a_top_level_shorthand(write_pipeline, manager):
    pipe = build_pipeline(write_pipeline(SHORTHAND), ["data.noise=0.2"], manager)
    assert pipe.dataset.registered_name == "moons" and pipe.dataset.params.noise == 0.2


def test_a_kind_added_by_a_plugin_works_as_a_nested_field(write_pipeline):
    manager = make_manager(plugins=[("warps", WarpPlugin())])
    pipe = build_pipeline(write_pipeline(SHORTHAND + '[sample]\ngrid = "warped"\n'), (), manager)
    assert isinstance(pipe.sample.grid.params.warp, Square)


class Warp(Component):
    """A kind added by a plugin."""


class Square(Warp):
    """u -> u^2."""


class WarpedGrid(TimeGrid):
    """A uniform grid passed through a warp."""

    @attrs.define(frozen=True)
    class Params:
        warp: Warp = component("square", doc="The warp.")

    def __call__(self, steps, t_start, t_end):
        return t_start + (t_end - t_start) * torch.linspace(0, 1, steps + 1) ** 2


class WarpPlugin:
    @hookimpl
    def flowkit_register(self, registry):
        registry.add_kind("warp", Warp)
        registry.add("warp", "square", Square)
        registry.add("timegrid", "warped", WarpedGrid)


def test_one_unresolvable_annotation_leaves_the_other_fields_checked(tmp_path):
    import sys

    from flowkit.config import Location, Structurer
    from flowkit.interfaces import BuildContext

    source = (
        "from __future__ import annotations\n"
        "import attrs\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from nowhere import Missing\n"
        "@attrs.define(frozen=True)\n"
        "class Params:\n"
        "    steps: int = 1\n"
        "    other: Missing = None\n"
    )
    (tmp_path / "half_typed.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        import half_typed

        structurer = Structurer(PluginManager(entrypoints=False).registry, BuildContext())
        warned = pytest.warns(UserWarning, match=r"half_typed\.Params\.other: annotation 'Missing' cannot be")
        refused = pytest.raises(ConfigError, match=r"key 'steps': expected an integer, found \"lots\"")
        with warned, refused:
            structurer.structure(half_typed.Params, {"steps": "lots"}, Location("f.toml", ("grid",)))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("half_typed", None)
