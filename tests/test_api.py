"""The Python API: ``flowkit.load_pipeline`` (from a file or a dict) trains, samples and evaluates;
``flowkit.open_run`` opens a finished run directory again and refuses what is not one."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_file
from torch import Tensor

import flowkit
from flowkit.errors import ConfigError, FlowkitError
from flowkit.testing import make_manager

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def test_load_train_sample_evaluate(tiny_pipeline):
    pipe = flowkit.load_pipeline(tiny_pipeline, overrides=["train.steps=30"], manager=make_manager())
    assert pipe.pipeline.train.steps == 30
    losses = pipe.train()
    assert [step for step, _ in losses] == [20, 30]
    assert all(isinstance(loss, float) and np.isfinite(loss) for _, loss in losses)
    metrics = pipe.evaluate()  # a fresh [sample] n
    assert {"distance", "noise_floor"} <= set(metrics)
    assert metrics["distance"] > 0 and metrics["noise_floor"] > 0
    x = pipe.sample(50)
    assert isinstance(x, Tensor) and x.shape == (50, 2) and x.dtype == torch.float32


def test_load_pipeline_from_a_dict(tiny_pipeline):
    tables = tomllib.loads(tiny_pipeline.read_text())
    pipe = flowkit.load_pipeline(tables, overrides=["train.steps=5"], manager=make_manager())
    assert pipe.pipeline.source == "<dict>"
    assert pipe.pipeline.train.steps == 5
    assert len(pipe.train()) == 1
    assert pipe.sample(10).shape == (10, 2)
    assert tables["train"]["steps"] == 60  # the caller's dict is not modified
    wrong = {**tables, "train": {"stpes": 5}}
    with pytest.raises(ConfigError) as err:
        flowkit.load_pipeline(wrong, manager=make_manager())
    message = str(err.value)
    assert message.startswith("<dict>: [train] key 'stpes': unknown key. Did you mean 'steps'?"), message


def test_a_run_directory_opens_again(tmp_path):
    manager = make_manager()
    done = flowkit.load_pipeline(tiny_file(tmp_path), manager=manager).run(out=tmp_path / "run")
    assert done.directory == tmp_path / "run"
    opened = flowkit.open_run(done.directory, manager=manager)
    assert opened.metrics == json.loads((done.directory / "metrics.json").read_text())
    assert opened.metrics["distance"] == done.metrics["distance"]
    assert opened.sample(20).shape == (20, 2)
    n = opened.pipeline.pipeline.sample.n
    saved = np.load(done.directory / "samples.npy")
    assert np.array_equal(opened.sample(n).numpy(), saved)  # EMA weights, the same sampling seed
    assert np.array_equal(opened.samples.numpy(), saved)
    assert opened.labels is None and opened.pipeline.labels(5) is None  # unconditional
    with pytest.raises(FlowkitError, match=r"labels\(n\): n must be positive, got 0"):
        opened.pipeline.labels(0)


def test_open_run_refuses_what_is_not_a_run(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FlowkitError, match=rf"{missing}: no such run directory"):
        flowkit.open_run(missing)
    half = tmp_path / "half"
    half.mkdir()
    (half / "pipeline.toml").write_text("")
    with pytest.raises(FlowkitError, match=rf"{half}: not a finished run directory \(no metrics.json\)"):
        flowkit.open_run(half)
