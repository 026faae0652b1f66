"""Plugin tables (``registry.add_table``): read in the plugin's hooks, checked like flowkit's own
tables, described and in the reference, and refused when two plugins or a flowkit table collide."""

from __future__ import annotations

import sys
from typing import Any

import attrs
import pytest
from conftest import hook_plugin, tiny_file

from flowkit import hookimpl
from flowkit.docs import describe_section, generate_reference
from flowkit.engine import build_pipeline, run_pipeline
from flowkit.errors import ConfigError, PluginError
from flowkit.params import param
from flowkit.testing import make_manager

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@attrs.frozen
class MyReportSettings:
    """``[myreport]``: how often my reporter reports."""

    every: int = param(5, doc="Report every this many training steps.", validator=attrs.validators.gt(0))


class MyReporter:
    """A plugin with its own table, reading it in a lifecycle hook."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl
    def flowkit_register(self, registry):
        registry.add_table("myreport", MyReportSettings)

    @hookimpl
    def flowkit_run_start(self, run):
        self.seen.append(run.table("myreport"))

    @hookimpl
    def flowkit_train(self, run):  # keep the run short: no training, sample the initial weights
        return True


def _table_manager(*plugins):
    return make_manager(plugins=[("myreport", MyReporter()), *plugins], warn=False)


def test_a_plugin_table_reaches_the_plugins_hooks(tmp_path):
    manager = _table_manager()
    reporter = manager.pm.get_plugin("myreport")
    path = tiny_file(tmp_path, "[myreport]\nevery = 3\n")
    pipeline = build_pipeline(path, (), manager)
    assert pipeline.table("myreport") == MyReportSettings(every=3)
    run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert [s.every for s in reporter.seen] == [3]
    resolved = tomllib.loads((tmp_path / "run" / "pipeline.toml").read_text())
    assert resolved["myreport"] == {"every": 3}


def test_a_plugin_table_without_keys_gives_its_defaults_and_an_absent_one_none(tmp_path):
    pipeline = build_pipeline(tiny_file(tmp_path, "[myreport]\n"), (), _table_manager())
    assert pipeline.table("myreport") == MyReportSettings()
    assert pipeline.table("myreport").every == 5
    absent = build_pipeline(tiny_file(tmp_path, name="absent.toml"), (), _table_manager())
    assert absent.table("myreport") is None


def test_a_misspelled_key_of_a_plugin_table_is_named(tmp_path):
    path = tiny_file(tmp_path, "[myreport]\nevry = 3\n")
    with pytest.raises(ConfigError) as err:
        build_pipeline(path, (), _table_manager())
    message = str(err.value)
    assert message.startswith(f"{path}: [myreport] key 'evry': unknown key.")
    assert "Did you mean 'every'?" in message


def test_a_plugin_tables_validator_names_the_key(tmp_path):
    path = tiny_file(tmp_path, "[myreport]\nevery = 0\n")
    with pytest.raises(ConfigError, match=r"\[myreport\] key 'every': invalid value 0: 'every' must be > 0"):
        build_pipeline(path, (), _table_manager())
    with pytest.raises(ConfigError, match=r"\[myreport\] key 'every': expected an integer"):
        build_pipeline(tiny_file(tmp_path, '[myreport]\nevery = "3"\n', name="s.toml"), (), _table_manager())


def test_a_plugin_table_is_described_and_in_the_reference():
    manager = _table_manager()
    text = describe_section("myreport", manager.registry)
    assert text.startswith("[myreport]: ")
    assert "every" in text and "Report every this many training steps." in text
    assert "declared by plugin 'myreport'" in text
    reference = generate_reference(manager)
    assert "### `[myreport]`" in reference
    assert "`every`" in reference.split("### `[myreport]`", 1)[1].split("###", 1)[0]


def test_two_plugins_declaring_one_table_is_a_problem_naming_both():
    def flowkit_register(registry):
        registry.add_table("myreport", MyReportSettings)

    manager = _table_manager(hook_plugin("copycat", flowkit_register=flowkit_register))
    messages = [p.message for p in manager.problems]
    assert len(messages) == 1, messages
    assert "duplicate table [myreport]" in messages[0]
    assert "plugin 'myreport'" in messages[0] and "plugin 'copycat'" in messages[0]
    assert manager.problems[0].plugin.name == "copycat"
    assert [e.plugin.name for e in manager.registry.tables() if e.name == "myreport"] == ["myreport"]


def test_a_plugin_declaring_a_flowkit_table_fails_the_build_naming_it(tmp_path):
    def flowkit_register(registry):
        registry.add_table("train", MyReportSettings)

    manager = make_manager(plugins=[hook_plugin("usurper", flowkit_register=flowkit_register)], warn=False)
    with pytest.raises(PluginError, match=r"plugin 'usurper' .*declares table \[train\].*-p no:usurper"):
        build_pipeline(tiny_file(tmp_path), (), manager)


def test_the_report_table_belongs_to_the_report_plugin(tmp_path):
    path = tiny_file(tmp_path)
    entry = {e.name: e for e in make_manager().registry.tables()}["report"]
    assert entry.plugin.name == "report"
    assert build_pipeline(path, (), make_manager()).table("report").plots is False
    with pytest.raises(
        ConfigError,
        match=r"unknown table \[report\]\..* Blocked plugins, which may declare it: 'report' "
        r"\(by -p no:NAME or FLOWKIT_DISABLE_PLUGINS\)$",
    ):
        build_pipeline(path, (), make_manager(blocked=["report"]))
