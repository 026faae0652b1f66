"""Discrete flow matching reaches its figures at reduced size (examples/README.md has the full runs):
the checkerboard on a 32 x 32 grid from either source, sampled with 64 discrete Euler steps, puts at
least 95% of its samples on the dark cells and is within 1.5x the noise floor of the total variation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flowkit_discrete.data import CheckerboardGrid

from flowkit.engine import build_pipeline, run_pipeline
from flowkit.testing import make_manager

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "checkerboard-discrete.toml"


@pytest.mark.slow
@pytest.mark.parametrize(("source", "loss"), [("mask", "cross-entropy"), ("uniform", "generalized-kl")])
def test_the_discrete_checkerboard_lands_on_the_dark_cells(source, loss, tmp_path):
    manager = make_manager()
    overrides = [f"path.source={source}", f"loss.kind={loss}", "train.steps=1000", "sample.n=4000"]
    overrides.append("report.plots=false")  # the figures are tests/test_report.py's
    pipe = build_pipeline(EXAMPLE, overrides, manager)
    assert pipe.sample.steps == 64 and pipe.dataset.vocabulary == 32  # type: ignore[attr-defined]
    metrics = run_pipeline(pipe, manager, out=str(tmp_path / "run"), quiet=True).metrics
    samples = torch.from_numpy(np.load(tmp_path / "run" / "samples.npy"))
    dark = float(CheckerboardGrid().is_dark(samples).double().mean())
    assert dark >= 0.95, (dark, metrics)
    assert metrics["distance"] <= 1.5 * metrics["noise_floor"], metrics
