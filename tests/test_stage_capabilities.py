"""What a plugin gets when a stage runs, each checked with the third-party-style plugins of
``tests/contract_plugins.py``: a set-up step with the run's seed (never at validate), the noise the
samples came from, extra scalars a loss reports, absent plugin tables, guidance built once."""

from __future__ import annotations

import json
from typing import Any

import contract_plugins
import numpy as np
import pytest
import torch

import flowkit
from flowkit import hookimpl
from flowkit.api import LoadedPipeline
from flowkit.engine import build_pipeline, draw_samples, run_pipeline, sample_run
from flowkit.engine.components import components
from flowkit.engine.records import PipelineRun, sample_times
from flowkit.engine.seeds import stage_seed
from flowkit.errors import FlowkitError, PluginError
from flowkit.interfaces import Samples
from flowkit.testing import make_manager

TINY: dict[str, Any] = {
    "run": {"seed": 3, "device": "cpu"},
    "data": {"kind": "prepared-blob"},
    "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
    "model": {"kind": "mlp", "hidden": [16]},
    "loss": {"kind": "cfm"},
    "train": {"steps": 4, "batch_size": 16, "log_every": 2},
    "sample": {"n": 64, "steps": 3, "trajectories": 4},
    "evaluate": {"n": 64},
}


class Watcher:
    """Keeps what the sample stage handed to evaluation."""

    def __init__(self) -> None:
        self.samples: Samples | None = None

    @hookimpl
    def flowkit_evaluate_metrics(self, run: Any, samples: Samples) -> dict[str, Any]:
        self.samples = samples
        return {}


@pytest.fixture
def manager():
    return make_manager([contract_plugins], warn=False)


@pytest.fixture(autouse=True)
def _fresh_records():
    contract_plugins.SETUPS.clear()
    contract_plugins.BUILDS.clear()


# ---------------------------------------------------------------------------------------------------
# Set-up when a stage starts
# ---------------------------------------------------------------------------------------------------


def _centre(seed: int) -> torch.Tensor:
    return torch.randn(2, generator=torch.Generator().manual_seed(stage_seed(seed, "setup:prepared-blob")))


def test_setup_runs_when_each_stage_starts_with_the_runs_seed_and_never_when_building(tmp_path, manager):
    pipe = build_pipeline(TINY, (), manager)  # all that `flowkit validate` does
    assert contract_plugins.SETUPS == []
    run = run_pipeline(pipe, manager, out=str(tmp_path / "run"), quiet=True)
    assert [entry[:3] for entry in contract_plugins.SETUPS] == [
        ("train", 3, run.directory),
        ("sample", 3, run.directory),
        ("evaluate", 3, run.directory),
    ]
    # the set-up's draws come from the seed and the name alone: the same in every stage
    for *_, centre in contract_plugins.SETUPS:
        assert torch.equal(centre, _centre(3))
    # a finished run sampled again sets the components up for that stage, from the same seed
    sample_run(run.directory, manager, n=8)
    assert contract_plugins.SETUPS[-1][:3] == ("sample", 3, run.directory)
    assert torch.equal(contract_plugins.SETUPS[-1][3], _centre(3))
    other = build_pipeline(TINY, ["run.seed=4"], manager)
    LoadedPipeline(other, manager).train(steps=1)  # the Python API's stages too
    assert contract_plugins.SETUPS[-1][:3] == ("train", 4, None)
    assert not torch.equal(contract_plugins.SETUPS[-1][3], _centre(3))


def test_every_built_component_is_set_up_nested_ones_included(manager):
    pipe = build_pipeline(TINY, (), manager)
    kinds = {component.registered_kind for component in components(pipe)}
    assert {"device", "dataset", "path", "schedule", "model", "loss", "simulator", "dynamics"} <= kinds
    assert {"timegrid", "metric"} <= kinds
    assert any(component is pipe.path.params.schedule for component in components(pipe))
    assert len({id(c) for c in components(pipe)}) == len(components(pipe))  # each once


# ---------------------------------------------------------------------------------------------------
# The noise with the samples
# ---------------------------------------------------------------------------------------------------


def test_the_noise_returned_with_samples_simulates_to_them_bitwise(tmp_path, manager):
    watcher = Watcher()
    manager.pm.register(watcher, name="watcher")
    run = run_pipeline(build_pipeline(TINY, (), manager), manager, out=str(tmp_path / "run"), quiet=True)
    staged = watcher.samples
    assert staged is not None and staged.x0 is not None and staged.x0.shape == (64, 2)
    done = flowkit.open_run(run.directory, manager)
    drawn = done.sample(64, noise=True)
    assert torch.equal(drawn.samples, done.sample(64))  # the same samples as without the noise
    assert torch.equal(drawn.samples, torch.from_numpy(np.load(run.directory / "samples.npy")))
    assert torch.equal(drawn.x0, staged.x0)
    pipe = done.pipeline.pipeline
    again = pipe.sample.simulator.simulate(pipe.sample.dynamics, drawn.x0, sample_times(pipe))
    assert torch.equal(again, drawn.samples)
    assert drawn.nfe == pipe.sample.simulator.last_nfe and drawn.y is None
    x0, x1 = draw_samples(pipe, 64)  # the public low-level call
    assert torch.equal(x0, drawn.x0) and torch.equal(x1, drawn.samples)


# ---------------------------------------------------------------------------------------------------
# Extra scalars of a loss
# ---------------------------------------------------------------------------------------------------


def _log(directory) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]


def test_a_loss_reports_extra_scalars_into_metrics_jsonl_at_every_log_step(tmp_path, manager):
    spec = {**TINY, "loss": {"kind": "reporting-cfm"}}
    run = run_pipeline(build_pipeline(spec, (), manager), manager, out=str(tmp_path / "run"), quiet=True)
    lines = _log(run.directory)
    assert [line["step"] for line in lines] == [2, 4]
    for line in lines:  # the loss is 2 x the error: the means over the same steps, exactly
        assert line["loss"] == 2 * line["loss/unweighted"]
    plain = run_pipeline(build_pipeline(TINY, (), manager), manager, out=str(tmp_path / "p"), quiet=True)
    assert [sorted(line) for line in _log(plain.directory)] == [["loss", "lr", "step"]] * 2


def test_a_badly_named_scalar_is_one_error_naming_the_loss(manager):
    spec = {**TINY, "loss": {"kind": "reporting-cfm", "name": ""}}
    with pytest.raises(PluginError) as info:
        LoadedPipeline(build_pipeline(spec, (), manager), manager).train(steps=1)
    assert str(info.value) == (
        "loss 'reporting-cfm' reports a scalar named ''; names are non-empty strings (logged as loss/<name>)"
    )


# ---------------------------------------------------------------------------------------------------
# Absent tables
# ---------------------------------------------------------------------------------------------------


def test_an_absent_plugin_table_is_none_and_an_unknown_name_one_error(tmp_path, manager):
    absent = PipelineRun(build_pipeline(TINY, (), manager), tmp_path, manager.hook)
    assert absent.table("contract") is None
    assert "contract" not in absent.pipeline.resolved(manager)
    pipe = build_pipeline({**TINY, "contract": {"level": 2}}, (), manager)
    given = PipelineRun(pipe, tmp_path, manager.hook)
    assert given.table("contract") == contract_plugins.ContractTable(level=2)
    assert given.table("train").steps == 4 and given.table("data") is given.dataset
    with pytest.raises(FlowkitError) as info:
        absent.table("contrcat")
    assert str(info.value) == (
        "<dict>: run.table('contrcat'): no table [contrcat] is known, neither one of flowkit's nor one "
        "a plugin declared (registry.add_table). Did you mean 'contract'? Known tables: flowkit, run, "
        "data, path, model, loss, train, sample, evaluate, mlflow, report, tensorboard, wandb, contract"
    )


# ---------------------------------------------------------------------------------------------------
# Guidance built once
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_guided_dynamics_are_built_with_the_pipeline_and_never_while_sampling(tmp_path, manager):
    spec = {
        "run": {"seed": 3},
        "data": {"kind": "digits"},
        "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
        "model": {"kind": "unet", "channels": 8, "channel_mults": [1, 1], "attention": [4], "groups": 4},
        "loss": {"kind": "cfm"},
        "train": {"steps": 2, "batch_size": 8, "log_every": 2, "ema_decay": 0.0, "label_dropout": 0.25},
        "sample": {
            "steps": 2,
            "n": 20,
            "trajectories": 4,
            "dynamics": "counting-flow",
            "guidance": {"scale": 1.5, "classes": "all"},
        },
        "evaluate": {"metric": "sliced-w2", "n": 20},
    }
    pipe = build_pipeline(spec, (), manager)
    # once for the [sample] table, once on the guided field: both at build time
    assert len(contract_plugins.BUILDS) == 2
    run = run_pipeline(pipe, manager, out=str(tmp_path / "run"), quiet=True)  # samples and trajectories
    assert len(contract_plugins.BUILDS) == 2
    draw_samples(pipe, 10)
    assert len(contract_plugins.BUILDS) == 2
    sample_run(run.directory, manager, n=10)  # `flowkit sample` builds its pipeline once more
    assert len(contract_plugins.BUILDS) == 4
