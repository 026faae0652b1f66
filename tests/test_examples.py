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
IMAGES = ["digits", "digits-guidance"]
# Examples that read a folder a script makes first (examples/make_digits_folder.py); the suite makes
# it in tmp_path and points [data] root there.
FOLDERS = ["image-folder"]
# Few-step generation: sampled with one network evaluation as they stand (examples/README.md).
ONE_STEP = ["moons-meanflow", "moons-shortcut"]
# Few-step class-conditional images: one network evaluation as it stands (examples/README.md).
ONE_STEP_IMAGES = ["digits-meanflow"]
# Reflow: its teacher is a finished run of moons.toml (built here without it: nothing is drawn at build).
# The one-step files' quality (MeanFlow, shortcut, reflow at one evaluation) is checked at reduced size
# in tests/test_onestep_quality.py.
REFLOW = ["moons-reflow"]
# Data to data (a path whose source is a dataset): its quality test is in tests/test_data_to_data.py.
DATA_TO_DATA = ["gaussians-to-moons"]
# Discrete flow matching: quality at reduced size in tests/test_discrete_quality.py; here a few steps.
DISCRETE = ["checkerboard-discrete", "digits-discrete"]
# Riemannian flow matching on the sphere and the torus: their quality at reduced size is checked in
# tests/test_manifolds.py (geodesic W2 and the vMF likelihood).
MANIFOLDS = ["sphere-vmf", "torus-checkerboard"]
# Every example that trains a model, and every example a pipeline builds from as it stands.
TRAINABLE = TRAINED + IMAGES + ONE_STEP + ONE_STEP_IMAGES + DATA_TO_DATA + REFLOW + DISCRETE + MANIFOLDS
BUILT = TRAINABLE + EXACT
# What each trained example must reach within 3x the noise floor with (tests/test_example_training.py):
# 2,000 steps, a sixth of most examples' training (half of ot-cfm's); on 2026-12-07 the six reached
# 1.34-1.94x the floor with it and FEWER_POINTS (seed 0).
SHORT_TRAINING = ["train.steps=2000", "train.warmup_steps=100"]
# Half the examples' 2,000 points for those checks: the exact W2 (an assignment, cubic in the points)
# and the noise floor's three draws cost an eighth, and the floor is measured at the same size; no
# figures (the vector field's streamlines alone take seconds; tests/test_report.py checks them).
FEWER_POINTS = ["sample.n=1000", "evaluate.n=1000", "report.plots=false"]


@pytest.fixture(scope="module")
def manager():
    return make_manager()


def test_every_example_is_listed_here():
    assert sorted(p.stem for p in EXAMPLES.glob("*.toml")) == sorted(BUILT + FOLDERS)


@pytest.mark.parametrize("name", BUILT)
def test_example_builds(name, manager):
    pipe = build_pipeline(EXAMPLES / f"{name}.toml", (), manager)
    assert pipe.model.trainable == (name in TRAINABLE)


def run_example(name, manager, tmp_path, overrides=()):
    pipe = build_pipeline(EXAMPLES / f"{name}.toml", overrides, manager)
    return run_pipeline(pipe, manager, out=str(tmp_path / name), quiet=True).metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT)
def test_oracle_example_is_within_1_5_times_the_noise_floor(name, manager, tmp_path):
    metrics = run_example(name, manager, tmp_path)
    assert metrics["distance"] <= 1.5 * metrics["noise_floor"], metrics


@pytest.mark.parametrize("name", IMAGES)
def test_digits_example_runs_guided_with_a_few_steps(name, manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    short = ["train.steps=3", "train.warmup_steps=1", "sample.steps=2", "sample.n=100", "evaluate.n=100"]
    metrics = run_example(name, manager, tmp_path, short)
    assert metrics["train_steps"] == 3 and metrics["nfe"] == 4
    assert {"class_accuracy", "classifier_accuracy", "frechet", "frechet_floor", "frechet_ratio"} <= set(
        metrics
    )
    labels = np.load(tmp_path / name / "labels.npy")
    assert np.bincount(labels).tolist() == [10] * 10  # "all": every class, equally often


@pytest.mark.parametrize("name", ONE_STEP_IMAGES)
def test_one_step_digits_example_runs_with_one_evaluation_per_jump(name, manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    short = ["train.steps=3", "train.warmup_steps=1", "sample.steps=2", "sample.n=100", "evaluate.n=100"]
    metrics = run_example(name, manager, tmp_path, short)
    assert metrics["train_steps"] == 3 and metrics["nfe"] == 2  # unguided: one evaluation a jump
    assert {"class_accuracy", "frechet_ratio"} <= set(metrics)
    labels = np.load(tmp_path / name / "labels.npy")
    assert np.bincount(labels).tolist() == [10] * 10


# digits-meanflow.toml at reduced size (an MLP of 256 x 2, a third of the training, 300 samples, two
# jumps): the full file reads 99% as their class at one jump (examples/README.md); this size read 99.3%
# at a Fréchet ratio of 2.21 (seed 0; seeds 1 and 2: 99.3% at 1.97, 99.7% at 3.40). The bounds: the
# issue's 95%, and a ratio of 4 against a collapse. Catches labels lost between the loss, the two-time
# network and the jump (planted: the loss giving the null label for each, the test fails).
REDUCED_MEANFLOW = [
    "model.hidden=[256, 256]",
    "train.steps=500",
    "train.warmup_steps=50",
    "sample.steps=2",
    "sample.n=300",
    "evaluate.n=300",
    "report.plots=false",
]


@pytest.mark.slow
def test_digits_meanflow_at_two_jumps_reads_most_samples_as_their_class(manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    metrics = run_example("digits-meanflow", manager, tmp_path, REDUCED_MEANFLOW)
    assert metrics["train_steps"] == 500 and metrics["nfe"] == 2
    assert metrics["class_accuracy"] >= 0.95 and metrics["frechet_ratio"] <= 4.0, metrics


def test_image_folder_example_runs_on_the_folder_its_script_makes(manager, tmp_path, monkeypatch):
    import runpy

    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))
    make = runpy.run_path(str(EXAMPLES / "make_digits_folder.py"))["make_digits_folder"]
    root = make(tmp_path / "digits-16")
    assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    assert sum(1 for _ in root.rglob("*.png")) == 1797
    short = [f"data.root={root}", "train.steps=3", "train.warmup_steps=1", "sample.steps=2"]
    metrics = run_example("image-folder", manager, tmp_path, [*short, "sample.n=60", "evaluate.n=60"])
    assert metrics["metric"] == "fid" and metrics["fid_reference"]["count"] == 60
    assert metrics["fid_held_out_count"] == 60 and metrics["fid_held_out"] < metrics["distance"]


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_example_runs_with_a_few_steps(name, manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWKIT_CACHE", str(tmp_path / "cache"))  # the digits' reference classifier
    short = ["train.steps=3", "train.warmup_steps=1", "sample.steps=4", "sample.n=100", "evaluate.n=100"]
    metrics = run_example(name, manager, tmp_path, short)
    assert metrics["train_steps"] == 3 and metrics["nfe"] == 4  # guided: one batch of 2B a step
    assert metrics["metric"] == "total-variation" and 0 < metrics["distance"] <= 1
    samples = np.load(tmp_path / name / "samples.npy")
    vocabulary = 17 if name == "digits-discrete" else 32
    assert (samples == np.round(samples)).all() and 0 <= samples.min() <= samples.max() < vocabulary
