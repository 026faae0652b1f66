"""The plugin manager: entry-point discovery, registration checks and the errors of DESIGN.md."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import tiny_file

import flowkit
from flowkit.cli import main
from flowkit.engine import build_pipeline
from flowkit.errors import FlowkitError, PluginError, RegistryError
from flowkit.interfaces import Schedule
from flowkit.registry import ComponentRegistry, FlowkitPluginWarning, PluginManager
from flowkit.testing import make_manager

BUILTINS = {
    "gaussian": {
        ("path", "gaussian"),
        ("schedule", "ot"),
        ("schedule", "vp"),
        ("schedule", "ve"),
        ("schedule", "cosine"),
        ("model", "mixture-oracle"),
        ("dataset", "gaussian-mixture"),
    },
    "losses": {("loss", "cfm"), ("loss", "dsm")},
    "simulators": {
        ("simulator", "euler"),
        ("simulator", "heun"),
        ("simulator", "euler-maruyama"),
        ("dynamics", "flow"),
        ("dynamics", "extension-sde"),
        ("dynamics", "langevin"),
        ("timegrid", "uniform"),
    },
    "nets": {("model", "mlp")},
    "data": {
        ("dataset", "moons"),
        ("dataset", "circles"),
        ("dataset", "eight-gaussians"),
        ("dataset", "checkerboard"),
        ("dataset", "file"),
    },
    "devices": {("device", "cpu"), ("device", "cuda"), ("device", "auto")},
    "metrics": {("metric", "w2"), ("metric", "sliced-w2"), ("metric", "energy")},
    "report": set(),
}

LINEAR_SCHEDULE = """
import attrs
import torch
from flowkit import hookimpl
from flowkit.interfaces import Schedule

class Linear(Schedule):
    '''alpha = t, beta = 1 - t.'''
    def alpha(self, t): return t
    def beta(self, t): return 1 - t
    def d_alpha(self, t): return torch.ones_like(t)
    def d_beta(self, t): return -torch.ones_like(t)

@hookimpl
def flowkit_register(registry):
    registry.add("schedule", "linear", Linear)
"""


class HalfSchedule(Schedule):
    """Missing three of the four abstract methods."""

    def alpha(self, t):
        return t


def test_builtins_are_discovered_through_entry_points():
    manager = PluginManager()
    assert manager.problems == []
    for name, components in BUILTINS.items():
        info = manager.plugins[name]
        assert (info.dist, info.version) == ("flowkit", flowkit.__version__)
        provided = {(e.kind, e.name) for e in manager.components_of(name)}
        assert components <= provided, f"{name} lacks {components - provided}"


def test_core_has_no_list_of_builtins():
    """The built-ins come from pyproject's entry points only: without them the registry is empty."""
    manager = PluginManager(entrypoints=False)
    assert manager.plugins == {}
    assert manager.registry.entries() == []


def test_third_party_plugin_through_a_real_entry_point(make_distribution):
    make_distribution(
        "flowkit-linear", "1.2.3", {"linear": "linear_plugin"}, {"linear_plugin": LINEAR_SCHEDULE}
    )
    manager = PluginManager()
    entry = manager.registry.get("schedule", "linear")
    assert (entry.plugin.name, entry.plugin.dist, entry.plugin.version) == (
        "linear",
        "flowkit-linear",
        "1.2.3",
    )
    assert entry.doc == "alpha = t, beta = 1 - t."

    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "linear  (flowkit-linear 1.2.3)" in result.output
    assert "schedule   linear" in result.output

    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).output)
    row = next(r for r in data["plugins"] if r["name"] == "linear")
    assert row == {
        "name": "linear",
        "distribution": "flowkit-linear",
        "version": "1.2.3",
        "module": "linear_plugin",
        "components": [{"kind": "schedule", "name": "linear"}],
    }


def test_duplicate_name_names_both_plugins(make_distribution):
    make_distribution(
        "flowkit-dupe",
        "0.1",
        {"dupe": "dupe_plugin"},
        {"dupe_plugin": LINEAR_SCHEDULE.replace('"linear", Linear', '"ot", Linear')},
    )
    with pytest.warns(FlowkitPluginWarning):
        manager = PluginManager()
    [problem] = manager.problems
    assert problem.message == (
        "duplicate schedule 'ot': registered by plugin 'gaussian' (flowkit 0.1.0) as "
        "flowkit_gaussian.schedules.OTSchedule and again by plugin 'dupe' (flowkit-dupe 0.1) as "
        "dupe_plugin.Linear; the first is kept. Rename one, or block one with -p no:NAME"
    )
    assert manager.registry.get("schedule", "ot").plugin.name == "gaussian"
    assert "cfm" in manager.registry.names("loss")  # the rest keeps working


def test_class_missing_interface_methods_is_rejected():
    registry = ComponentRegistry()
    with pytest.raises(RegistryError) as err:
        registry.add("schedule", "half", HalfSchedule)
    assert str(err.value) == (
        f"a direct registry.add call registers schedule 'half' as {__name__}.HalfSchedule, which "
        "does not implement flowkit.interfaces.Schedule: missing beta, d_alpha, d_beta"
    )


def test_class_of_the_wrong_kind_is_rejected():
    registry = ComponentRegistry()
    with pytest.raises(
        RegistryError,
        match=r"registers loss 'x' as builtins.dict, which does not derive "
        r"from flowkit.interfaces.Loss; subclass it",
    ):
        registry.add("loss", "x", dict)
    with pytest.raises(RegistryError, match=r"under unknown kind 'schedul'\. Did you mean 'schedule'\?"):
        registry.add("schedul", "x", HalfSchedule)


def test_plugin_that_fails_to_import_is_reported_and_the_rest_keep_working(make_distribution):
    make_distribution(
        "flowkit-broken",
        "2.0",
        {"broken": "broken_plugin"},
        {"broken_plugin": "raise RuntimeError('no GPU driver here')\n"},
    )
    with pytest.warns(FlowkitPluginWarning, match="broken"):
        manager = PluginManager()
    [problem] = manager.problems
    assert problem.message == (
        "plugin 'broken' (flowkit-broken 2.0) failed to import 'broken_plugin': "
        "RuntimeError: no GPU driver here"
    )
    assert "broken" not in manager.plugins
    assert manager.registry.get("path", "gaussian")

    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "flowkit: warning: plugin 'broken' (flowkit-broken 2.0) failed to import" in result.output


def test_misspelled_hook_is_an_error_not_silence(make_distribution):
    make_distribution(
        "flowkit-typo",
        "0.3",
        {"typo": "typo_plugin"},
        {
            "typo_plugin": """
        from flowkit import hookimpl
        @hookimpl
        def flowkit_regster(registry):
            pass
    """
        },
    )
    with pytest.warns(FlowkitPluginWarning):
        manager = PluginManager()
    [problem] = manager.problems
    assert problem.message == (
        "plugin 'typo' (flowkit-typo 0.3) implements unknown hook 'flowkit_regster'. "
        "Did you mean 'flowkit_register'? The plugin was not loaded"
    )
    assert "typo" not in manager.plugins


def test_unknown_name_lists_known_and_suggests_nearest():
    registry = PluginManager().registry
    with pytest.raises(RegistryError) as err:
        registry.get("simulator", "huen")
    assert str(err.value) == (
        "unknown simulator 'huen'. Did you mean 'heun'? Known simulators: "
        + ", ".join(registry.names("simulator"))
    )


def test_block_with_option_and_environment(monkeypatch):
    manager = PluginManager(blocked=["metrics"])
    assert "metrics" not in manager.plugins and "metrics" in manager.blocked
    # Other plugins add metrics of their own (flowkit_manifolds: geodesic-w2); the blocked one's are gone.
    assert not {"w2", "sliced-w2", "energy"} & set(manager.registry.names("metric"))

    monkeypatch.setenv("FLOWKIT_DISABLE_PLUGINS", "metrics, report")
    manager = PluginManager()
    assert {"metrics", "report"} <= manager.blocked
    assert "report" not in manager.plugins

    result = CliRunner().invoke(main, ["-p", "no:nets", "plugins"])
    assert "nets  (blocked)" in result.output
    assert "model      mlp" not in result.output


def test_core_cannot_be_disabled_and_unknown_block_is_reported():
    with pytest.raises(PluginError, match="plugin 'flowkit' is flowkit's core and cannot be disabled"):
        PluginManager(blocked=["flowkit"])
    with pytest.warns(
        FlowkitPluginWarning,
        match=r"cannot block plugin 'metric': no plugin of that name\. "
        r"Did you mean 'metrics'\?",
    ):
        PluginManager(blocked=["metric"])
    result = CliRunner().invoke(main, ["-p", "flowkit", "plugins"])
    assert result.exit_code == 1
    assert "Error: -p flowkit: expected 'no:NAME' to block the plugin NAME" in result.output


def test_importing_flowkit_loads_no_plugin():
    import subprocess
    import sys

    code = (
        "import sys, flowkit, flowkit.registry, flowkit.engine, flowkit.cli; "
        "print(sorted(m for m in sys.modules if m.startswith('flowkit_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_component_of_a_blocked_plugin_names_the_plugin(tmp_path):
    path = tiny_file(tmp_path, replace={'simulator = "euler"': 'simulator = "heun"'})
    with pytest.raises(FlowkitError) as err:
        build_pipeline(path, (), make_manager(blocked=["simulators"], warn=False))
    message = str(err.value)
    assert "[sample] key 'simulator'" in message and "unknown simulator 'heun'" in message
    assert "Blocked plugins, which may provide it: 'simulators'" in message
