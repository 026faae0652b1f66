"""The engine's train, sample and evaluate stages are ordinary ``trylast`` hook implementations:
registered in every plugin manager, never blockable, listed as flowkit's own, and replaced by a plugin
that returns a result first."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from flowkit import hookimpl
from flowkit.cli import main
from flowkit.engine import build_pipeline, run_pipeline
from flowkit.engine import evaluate as evaluate_module
from flowkit.engine import sample as sample_module
from flowkit.engine import train as train_module
from flowkit.errors import PluginError
from flowkit.interfaces import Samples
from flowkit.registry import DISABLE_ENV, STAGES, PluginManager

TINY = {
    "run": {"seed": 3, "device": "cpu"},
    "data": {"kind": "moons"},
    "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
    "model": {"kind": "mlp", "hidden": [16]},
    "loss": {"kind": "cfm"},
    "train": {"steps": 4, "batch_size": 16, "log_every": 2},
    "sample": {"n": 64, "steps": 2},
    "evaluate": {"n": 64},
}


def test_every_manager_registers_the_stages_under_their_reserved_names():
    manager = PluginManager(entrypoints=False, warn=False)
    assert manager.pm.get_plugin("flowkit-train") is train_module
    assert manager.pm.get_plugin("flowkit-sample") is sample_module
    assert manager.pm.get_plugin("flowkit-evaluate") is evaluate_module
    for hook in (manager.hook.flowkit_train, manager.hook.flowkit_sample, manager.hook.flowkit_evaluate):
        (impl,) = hook.get_hookimpls()
        assert impl.trylast
    assert "flowkit-train" not in manager.plugins  # not a third-party plugin: not in pipeline.toml's record


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_cannot_be_blocked(name, monkeypatch):
    message = f"plugin '{name}' is flowkit's own stage ({STAGES[name]}) and cannot be disabled"
    with pytest.raises(PluginError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PluginManager(blocked=[name], warn=False)
    monkeypatch.setenv(DISABLE_ENV, name)
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 1
    assert f"Error: {message}" in result.output


def test_a_plugin_cannot_take_a_stage_name():
    manager = PluginManager(entrypoints=False, warn=False, plugins=[("flowkit-sample", object())])
    assert [p.message for p in manager.problems] == [
        "plugin 'flowkit-sample' ((registered directly)) uses the reserved name 'flowkit-sample'; rename it"
    ]


def test_the_listing_names_the_stages_as_flowkits_own():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("flowkit  (flowkit ") and lines[0].endswith("cannot be blocked)")
    assert lines[1] == "    stages     flowkit-train, flowkit-sample, flowkit-evaluate"
    data = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).output)
    assert data["stages"] == [{"name": name, "module": module} for name, module in STAGES.items()]
    assert not {row["name"] for row in data["plugins"]} & set(STAGES)


def test_a_plugin_returning_a_result_first_takes_each_stage_over(tmp_path):
    calls: list[str] = []
    fixed = torch.zeros(64, 2)

    class Takeover:
        @staticmethod
        @hookimpl
        def flowkit_train(run: Any) -> bool:
            calls.append("train")
            return True

        @staticmethod
        @hookimpl
        def flowkit_sample(run: Any) -> Samples:
            calls.append("sample")
            return Samples(fixed, None, 0, None)

        @staticmethod
        @hookimpl
        def flowkit_evaluate(run: Any, samples: Samples) -> dict[str, Any]:
            calls.append("evaluate")
            assert samples.samples is fixed
            return {}

    manager = PluginManager(warn=False, plugins=[("takeover", Takeover())])
    run = run_pipeline(build_pipeline(TINY, (), manager), manager, out=str(tmp_path / "run"), quiet=True)
    assert calls == ["train", "sample", "evaluate"]
    # the engine's stages did not run: no weights, no samples file, no distance
    assert not (run.directory / "model.pt").exists()
    assert not (run.directory / "samples.npy").exists()
    assert "distance" not in run.metrics and "train_steps" not in run.metrics


def test_a_plugin_returning_none_leaves_the_stage_to_the_engine(tmp_path):
    seen: list[str] = []

    class Watcher:
        @staticmethod
        @hookimpl
        def flowkit_train(run: Any) -> None:
            seen.append("train")

    manager = PluginManager(warn=False, plugins=[("watcher", Watcher())])
    run = run_pipeline(build_pipeline(TINY, (), manager), manager, out=str(tmp_path / "run"), quiet=True)
    assert seen == ["train"]
    assert run.metrics["train_steps"] == 4
    assert (run.directory / "model.pt").is_file() and (run.directory / "samples.npy").is_file()
