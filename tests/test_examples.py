"""The bundled example pipelines build, and reach their stated distances (examples/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowkit.engine import build_pipeline, run_pipeline
from flowkit.testing import make_manager

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TRAINED = ["moons", "cosine", "vp-dsm", "ve-dsm", "cfm-sde", "ot-cfm"]
EXACT = ["oracle-ode", "oracle-sde"]
# Conditional image examples: the full run takes minutes (examples/README.md); the suite runs a few steps.
IMAGES = ["digits"]
# Few-step generation: sampled with one network evaluation as they stand (examples/README.md).
ONE_STEP = ["moons-meanflow"]
# Riemannian flow matching on the sphere and the torus: their quality at reduced size is checked in
# tests/test_manifolds.py (geodesic W2 and the vMF likelihood).
MANIFOLDS = ["sphere-vmf", "torus-checkerboard"]
# What each trained example must reach even with a quarter of its training (the full runs reach
# ratios of 0.8-0.9, see examples/README.md): within 3x the noise floor.
SHORT_TRAINING = ["train.steps=3000", "train.warmup_steps=100"]


@pytest.fixture(scope="module")
def manager():
    return make_manager()


def test_every_example_is_listed_here():
    assert sorted(p.stem for p in EXAMPLES.glob("*.toml")) == sorted(
        TRAINED + EXACT + IMAGES + ONE_STEP + MANIFOLDS
    )


@pytest.mark.parametrize("name", TRAINED + EXACT + IMAGES + ONE_STEP + MANIFOLDS)
def test_example_builds(name, manager):
    pipe = build_pipeline(EXAMPLES / f"{name}.toml", (), manager)
    assert pipe.model.trainable == (name in TRAINED + IMAGES + ONE_STEP + MANIFOLDS)


def run_example(name, manager, tmp_path, overrides=()):
    pipe = build_pipeline(EXAMPLES / f"{name}.toml", overrides, manager)
    return run_pipeline(pipe, manager, out=str(tmp_path / name), quiet=True).metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT)
def test_oracle_example_is_within_1_5_times_the_noise_floor(name, manager, tmp_path):
    metrics = run_example(name, manager, tmp_path)
    assert metrics["distance"] <= 1.5 * metrics["noise_floor"], metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINED)
def test_trained_example_is_within_3_times_the_noise_floor(name, manager, tmp_path):
    metrics = run_example(name, manager, tmp_path, SHORT_TRAINING)
    assert metrics["train_steps"] == 3000
    assert metrics["distance"] <= 3.0 * metrics["noise_floor"], metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", ONE_STEP)
def test_one_step_example_is_within_3_times_the_noise_floor_at_one_evaluation(name, manager, tmp_path):
    metrics = run_example(name, manager, tmp_path, ["train.steps=1500", "train.warmup_steps=100"])
    assert metrics["train_steps"] == 1500 and metrics["nfe"] == 1
    assert metrics["distance"] <= 3.0 * metrics["noise_floor"], metrics


def test_digits_example_runs_guided_with_a_few_steps(manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    short = ["train.steps=3", "train.warmup_steps=1", "sample.steps=2", "sample.n=100", "evaluate.n=100"]
    metrics = run_example("digits", manager, tmp_path, short)
    assert metrics["train_steps"] == 3 and metrics["nfe"] == 4
    assert {"class_accuracy", "classifier_accuracy", "frechet", "frechet_floor", "frechet_ratio"} <= set(
        metrics
    )
    labels = np.load(tmp_path / "digits" / "labels.npy")
    assert np.bincount(labels).tolist() == [10] * 10  # "all": every class, equally often
