"""The command line, through Click's test runner: run, validate, plugins, and how errors look."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import flowkit
from flowkit.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_run_end_to_end_writes_a_complete_run_directory(tiny_pipeline, tmp_path):
    out = tmp_path / "out"
    result = invoke("run", tiny_pipeline, "--out", out, "--set", "train.steps=40")
    assert result.exit_code == 0, result.output
    assert f"run directory: {out}" in result.output
    assert "w2 = " in result.output and "noise floor" in result.output and "nfe = 8" in result.output
    names = {p.name for p in out.iterdir()}
    assert {
        "pipeline.toml",
        "model.pt",
        "samples.npy",
        "metrics.json",
        "metrics.jsonl",
        "samples.png",
        "trajectories.png",
    } <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "w2" and metrics["nfe"] == 8 and metrics["train_steps"] == 40
    assert metrics["distance"] > 0 and metrics["noise_floor"] > 0
    assert metrics["ratio_to_floor"] == pytest.approx(metrics["distance"] / metrics["noise_floor"])
    samples = np.load(out / "samples.npy")
    assert samples.shape == (200, 2) and np.isfinite(samples).all()
    resolved = (out / "pipeline.toml").read_text()
    assert 'version = "0.1.0"' in resolved and "seed = 3" in resolved and "steps = 40" in resolved
    weights = torch.load(out / "model.pt", weights_only=True)
    assert set(weights) == {"step", "model", "raw"} and weights["step"] == 40
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [20, 40]

    # The same command again never overwrites the first run.
    again = invoke("run", tiny_pipeline, "--out", out, "--set", "train.steps=40", "--quiet")
    assert again.exit_code == 0, again.output
    assert f"run directory: {out}-2" in again.output
    assert np.array_equal(np.load(out / "samples.npy"), np.load(tmp_path / "out-2" / "samples.npy"))
    assert "w2 = " not in again.output


def test_validate_builds_without_training(tiny_pipeline):
    result = invoke("validate", tiny_pipeline)
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"{tiny_pipeline}: ok (data=moons, path=gaussian, model=mlp, loss=cfm, "
        "simulator=euler, dynamics=flow)\n"
    )


def test_user_error_is_one_paragraph_without_traceback(tiny_pipeline):
    result = invoke("validate", tiny_pipeline, "--set", "train.stpes=3")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tiny_pipeline}: [train] key 'stpes' (from --set): unknown key. "
        "Did you mean 'steps'? Valid keys: steps, batch_size, lr, lr_schedule, warmup_steps, "
        "weight_decay, grad_clip, ema_decay, log_every, checkpoint_every, keep_checkpoints, "
        "label_dropout, init, guide\n"
    )
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tiny_pipeline):
    from flowkit.errors import ConfigError

    result = invoke("--debug", "validate", tiny_pipeline, "--set", "train.stpes=3")
    assert result.exit_code == 1
    assert isinstance(result.exception, ConfigError)


def test_missing_file_is_a_user_error(tmp_path):
    result = invoke("run", tmp_path / "missing.toml")
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'missing.toml'}: no such pipeline file\n"


def test_cuda_requested_without_a_gpu_fails_before_any_work(tiny_pipeline, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = invoke("run", tiny_pipeline, "--set", "run.device=cuda", "--out", tmp_path / "never")
    assert result.exit_code == 1
    assert "device 'cuda' was requested but torch.cuda.is_available() is False" in result.output
    assert not (tmp_path / "never").exists()


#: A run on a one-point dataset: every sample set of it is the same point, so the noise floor is 0.
ONE_POINT = """
data = { kind = "file", path = "one.npy" }

[path]
kind = "gaussian"

[model]
kind = "mlp"
hidden = [16]

[loss]
kind = "cfm"

[train]
steps = 5

[sample]
simulator = "euler"
steps = 2
n = 20
trajectories = 0

[evaluate]
n = 20

[report]
plots = false
"""


def test_a_zero_noise_floor_is_reported_not_a_crash(tmp_path, write_pipeline):
    np.save(tmp_path / "one.npy", np.array([[1.0, 2.0]], dtype=np.float32))
    path = write_pipeline(ONE_POINT)
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "ratio n/a: the noise floor is 0" in result.output
    assert f"run directory: {tmp_path / 'run'}" in result.output


def test_version():
    result = subprocess.run([sys.executable, "-m", "flowkit", "--version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"flowkit, version {flowkit.__version__}"
