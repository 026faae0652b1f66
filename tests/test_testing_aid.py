"""flowkit.testing, the aid for plugin authors (its fixtures come from the pytest plugin
``pytest_flowkit``, registered under ``pytest11``), coverage seeing flowkit's imports, and the CLI
staying usable while a broken plugin is installed."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import attrs
import pytest
import torch
from click.testing import CliRunner

import flowkit
from flowkit.cli import main
from flowkit.errors import ConfigError
from flowkit.interfaces import Schedule
from flowkit.params import param
from flowkit.testing import build_component, check_component, component_problems, make_manager

BUILTIN_PLUGINS = {
    "couplings",
    "data",
    "devices",
    "discrete",
    "flowmaps",
    "gaussian",
    "guidance",
    "losses",
    "manifolds",
    "metrics",
    "nets",
    "report",
    "simulators",
    "tensorboard",
    "wandb",
    "mlflow",
}


class Linear(Schedule):
    """alpha = t, beta = 1 - t."""

    def alpha(self, t):
        return t

    def beta(self, t):
        return 1 - t

    def d_alpha(self, t):
        return torch.ones_like(t)

    def d_beta(self, t):
        return -torch.ones_like(t)


class Undocumented(Linear):
    """A schedule whose parameter has no doc and an unusual type."""

    @attrs.define(frozen=True)
    class Params:
        scale: float = 1.0
        table: set = param(factory=set, doc="A set, which TOML cannot write.")


class Half(Schedule):
    """Implements alpha only."""

    def alpha(self, t):
        return t


class LinearPlugin:
    @flowkit.hookimpl
    def flowkit_register(self, registry):
        registry.add("schedule", "linear", Linear)


ANOTHER = """
import torch
from flowkit import hookimpl
from flowkit.interfaces import Schedule

class Other(Schedule):
    '''Installed elsewhere.'''
    def alpha(self, t): return t
    def beta(self, t): return 1 - t
    def d_alpha(self, t): return torch.ones_like(t)
    def d_beta(self, t): return -torch.ones_like(t)

@hookimpl
def flowkit_register(registry):
    registry.add("schedule", "other", Other)
"""


def test_make_manager_holds_the_builtins_and_your_plugin_only(make_distribution, monkeypatch):
    make_distribution("flowkit-other", "1.0", {"other": "other_plugin"}, {"other_plugin": ANOTHER})
    monkeypatch.setenv("FLOWKIT_DISABLE_PLUGINS", "gaussian")
    manager = make_manager(plugins=[("linear", LinearPlugin())])
    assert manager.problems == []
    assert set(manager.plugins) == BUILTIN_PLUGINS | {"linear"}  # not 'other'; 'gaussian' not blocked
    assert manager.plugins["gaussian"].dist == "flowkit" and manager.plugins["gaussian"].version
    assert "linear" in manager.registry.names("schedule") and "other" not in manager.registry.names(
        "schedule"
    )
    # entrypoints=True loads what is installed, as the CLI does.
    everything = make_manager(entrypoints=True)
    assert "other" in everything.registry.names("schedule")


def test_make_manager_with_chosen_builtins_or_none():
    manager = make_manager(plugins=[("linear", LinearPlugin())], builtins=["gaussian"])
    assert set(manager.plugins) == {"gaussian", "linear"}
    assert manager.registry.names("loss") == []
    bare = make_manager(plugins=[("linear", LinearPlugin())], builtins=False)
    assert [(e.kind, e.name) for e in bare.registry.entries()] == [("schedule", "linear")]
    with pytest.raises(
        flowkit.errors.PluginError, match="no built-in plugin named gausian; built-in plugins: "
    ):
        make_manager(builtins=["gausian"])


def test_build_component_gives_the_errors_of_a_pipeline_file():
    manager = make_manager(builtins=["gaussian"])
    schedule = build_component(manager, "schedule", {"kind": "vp", "beta_max": 10.0})
    assert schedule.registered_name == "vp" and schedule.beta_max == 10.0
    path = build_component(manager, "path", {"kind": "gaussian", "schedule": "cosine"})
    assert path.schedule.registered_name == "cosine"
    with pytest.raises(ConfigError, match=r"<test>: \[schedule\] key 'beta_mx': unknown key\. Did you mean"):
        build_component(manager, "schedule", {"kind": "vp", "beta_mx": 10.0})


def test_check_component_lists_every_problem():
    assert check_component("schedule", Linear).name == "under-test"
    assert component_problems("schedule", Undocumented) == [
        f"{__name__}.Undocumented.Params.scale has no doc: declare it with flowkit.params.param",
        f"{__name__}.Undocumented.Params.table has type 'set'; use int, float, bool, str, list[...], "
        "typing.Literal[...] or a component interface",
    ]
    with pytest.raises(AssertionError, match="missing beta, d_alpha, d_beta"):
        check_component("schedule", Half)


@pytest.mark.flowkit_plugins(("linear", LinearPlugin()), builtins=["gaussian"])
def test_the_registry_fixture_takes_plugins_from_the_marker(flowkit_registry):
    assert flowkit_registry.names("schedule") == ["cosine", "linear", "ot", "ve", "vp"]


def test_the_manager_fixture_is_the_factory(flowkit_manager):
    assert flowkit_manager is make_manager


ROOT = Path(__file__).resolve().parents[1]

LOAD_PYTEST_PLUGIN = """
import importlib.metadata, json, sys
(ep,) = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "flowkit"]
ep.load()
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "flowkit")
print(json.dumps({"value": ep.value, "flowkit": loaded}))
"""


def test_the_pytest_plugin_imports_no_flowkit_module():
    # pytest imports pytest11 plugins before pytest-cov starts: a flowkit module imported then (as
    # when the plugin was flowkit.testing) shows as 0% covered, e.g. flowkit/hookspecs.py.
    done = subprocess.run([sys.executable, "-c", LOAD_PYTEST_PLUGIN], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"value": "pytest_flowkit", "flowkit": []}


COVERED = """
import flowkit.hookspecs


def test_fixture_and_import(flowkit_manager):
    assert flowkit_manager(builtins=False).problems == []
"""


def test_coverage_sees_the_import_of_flowkit(tmp_path):
    (tmp_path / "test_covered.py").write_text(COVERED)
    report = tmp_path / "coverage.json"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--cov=flowkit"]
    command += [f"--cov-report=json:{report}", "test_covered.py"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    files = json.loads(report.read_text())["files"]
    (hookspecs,) = [v for k, v in files.items() if Path(k).as_posix().endswith("flowkit/hookspecs.py")]
    assert hookspecs["summary"]["percent_covered"] > 50  # its definitions ran under coverage


def test_coverage_measures_the_core_and_every_builtin_plugin_with_a_floor():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # a plugin's package (the trackers' entry points name modules of one package, flowkit_trackers)
    plugins = {value.split(".")[0] for value in config["project"]["entry-points"]["flowkit"].values()}
    assert set(config["tool"]["coverage"]["run"]["source"]) == {"flowkit"} | plugins
    assert "pytest_flowkit" not in config["tool"]["coverage"]["run"]["source"]
    options = config["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert "--cov" in options
    (floor,) = [int(o.split("=")[1]) for o in options if o.startswith("--cov-fail-under=")]
    assert floor >= 50
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert installed.get("flowkit") == "pytest_flowkit"  # the installed metadata is current


def test_the_cli_keeps_working_while_broken_plugins_are_installed(make_distribution, tiny_pipeline):
    """A plugin that raises on import, one with a misspelled hook, one registering a duplicate and one
    registering an incomplete class: each is a warning naming it, and validate, describe and plugins
    still work."""
    make_distribution("flowkit-broken", "2.0", {"broken": "broken_plugin"}, {"broken_plugin": "1 / 0\n"})
    make_distribution(
        "flowkit-typo",
        "0.3",
        {"typo": "typo_plugin"},
        {"typo_plugin": "from flowkit import hookimpl\n@hookimpl\ndef flowkit_regsiter(registry): pass\n"},
    )
    make_distribution(
        "flowkit-dupe",
        "0.1",
        {"dupe": "dupe_plugin"},
        {"dupe_plugin": ANOTHER.replace('"other", Other', '"ot", Other')},
    )
    incomplete = "from flowkit import hookimpl\nfrom flowkit.interfaces import Loss\nclass Bad(Loss): pass\n"
    incomplete += "@hookimpl\ndef flowkit_register(registry): registry.add('loss', 'bad', Bad)\n"
    make_distribution("flowkit-bad", "0.9", {"bad": "bad_plugin"}, {"bad_plugin": incomplete})

    validated = CliRunner().invoke(main, ["validate", str(tiny_pipeline)])
    assert validated.exit_code == 0, validated.output
    assert validated.stdout == (
        f"{tiny_pipeline}: ok (data=moons, path=gaussian, model=mlp, loss=cfm, "
        "simulator=euler, dynamics=flow)\n"
    )
    warnings = validated.stderr.splitlines()
    assert warnings == [
        "flowkit: warning: plugin 'broken' (flowkit-broken 2.0) failed to import 'broken_plugin': "
        "ZeroDivisionError: division by zero",
        "flowkit: warning: plugin 'typo' (flowkit-typo 0.3) implements unknown hook 'flowkit_regsiter'. "
        "Did you mean 'flowkit_register'? The plugin was not loaded",
        "flowkit: warning: plugin 'bad' (flowkit-bad 0.9) registers loss 'bad' as bad_plugin.Bad, which does "
        "not implement flowkit.interfaces.Loss: missing __call__, model_role",
        "flowkit: warning: duplicate schedule 'ot': registered by plugin 'gaussian' (flowkit 0.1.0) as "
        "flowkit_gaussian.schedules.OTSchedule and again by plugin 'dupe' (flowkit-dupe 0.1) as "
        "dupe_plugin.Other; the first is kept. Rename one, or block one with -p no:NAME",
    ]
    described = CliRunner().invoke(main, ["describe", "schedule", "ot"])
    assert "flowkit_gaussian.schedules.OTSchedule" in described.stdout
    blocked = CliRunner().invoke(
        main,
        ["-p", "no:broken", "-p", "no:typo", "-p", "no:dupe", "-p", "no:bad", "validate", str(tiny_pipeline)],
    )
    assert blocked.exit_code == 0 and blocked.stderr == ""
