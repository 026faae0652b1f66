"""The stage hooks: a plugin's ``flowkit_train`` or ``flowkit_sample`` replaces the engine's stage (or
returns None to leave it to the engine), and ``flowkit_evaluate_metrics`` adds metrics to metrics.json."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import hook_plugin, tiny_file
from torch import Tensor

from flowkit.engine import build_pipeline, run_pipeline
from flowkit.engine.evaluate import measure
from flowkit.errors import PluginError
from flowkit.interfaces import Samples
from flowkit.testing import make_manager


def _run(path, manager, out, *overrides):
    return run_pipeline(build_pipeline(path, overrides, manager), manager, out=str(out), quiet=True)


def _skip_training(run):
    return True


def test_a_sample_hook_replaces_the_engines_sampling(tmp_path):
    fixed = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    ready: list[Tensor] = []

    def flowkit_sample(run):
        return Samples(fixed, None, 7)

    def flowkit_samples_ready(run, samples, reference, trajectory):
        ready.append(samples)

    manager = make_manager(
        plugins=[
            hook_plugin(
                "sampler",
                flowkit_train=_skip_training,
                flowkit_sample=flowkit_sample,
                flowkit_samples_ready=flowkit_samples_ready,
            )
        ]
    )
    pipeline = build_pipeline(tiny_file(tmp_path), (), manager)
    run = run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert not (run.directory / "samples.npy").exists()  # the plugin's to write; it wrote none
    assert "nfe" not in run.metrics and "sampler_captured" not in run.metrics
    assert run.metrics["distance"] == measure(pipeline, fixed)[0]["distance"]
    assert len(ready) == 1 and ready[0] is fixed


def test_a_train_hook_replaces_the_engines_training(tmp_path):
    steps: list[int] = []

    def flowkit_train_step(run, step, loss):
        steps.append(step)

    manager = make_manager(
        plugins=[hook_plugin("trainer", flowkit_train=_skip_training, flowkit_train_step=flowkit_train_step)]
    )
    pipeline = build_pipeline(tiny_file(tmp_path), (), manager)
    before = {k: v.clone() for k, v in pipeline.model.state_dict().items()}
    run = run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    assert steps == []
    assert not (run.directory / "model.pt").exists()
    assert "train_steps" not in run.metrics and "final_loss" not in run.metrics
    assert all(torch.equal(before[k], v) for k, v in pipeline.model.state_dict().items())
    assert (run.directory / "samples.npy").exists()  # the other stages still run


def test_a_train_hook_returning_none_leaves_training_to_the_engine(tmp_path):
    manager = make_manager(plugins=[hook_plugin("bystander", flowkit_train=lambda run: None)])
    run = _run(tiny_file(tmp_path), manager, tmp_path / "run", "train.steps=5", "train.log_every=5")
    assert run.metrics["train_steps"] == 5
    assert (run.directory / "model.pt").exists()


def test_extra_metrics_end_up_in_metrics_json(tmp_path):
    offered: list[tuple[int, int]] = []

    def flowkit_evaluate_metrics(run, samples, reference):
        offered.append((len(samples.samples), len(reference)))
        return {"my_metric": 1.5}

    manager = make_manager(
        plugins=[
            hook_plugin(
                "extra", flowkit_train=_skip_training, flowkit_evaluate_metrics=flowkit_evaluate_metrics
            )
        ]
    )
    run = _run(tiny_file(tmp_path), manager, tmp_path / "run")
    saved = json.loads((run.directory / "metrics.json").read_text())
    assert saved["my_metric"] == 1.5
    assert "distance" in saved
    assert offered == [(200, 200)]


def test_an_extra_metric_that_is_already_set_names_the_plugin(tmp_path):
    def flowkit_evaluate_metrics(run, samples, reference):
        return {"distance": 0.0}

    manager = make_manager(
        plugins=[
            hook_plugin(
                "cheat", flowkit_train=_skip_training, flowkit_evaluate_metrics=flowkit_evaluate_metrics
            )
        ]
    )
    with pytest.raises(PluginError, match=r"plugin 'cheat' returns metrics distance .*already set"):
        _run(tiny_file(tmp_path), manager, tmp_path / "run")
