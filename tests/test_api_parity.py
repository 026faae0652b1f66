"""The Python API does what the CLI does: ``train()`` shows ``flowkit run``'s progress bar (off with
``progress=False``), ``evaluate()`` returns ``metrics.json``'s metrics (timings aside), and the
pipeline and a finished run have ``likelihood()``, equal to ``flowkit likelihood --json``."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_file

import flowkit
from flowkit.cli import main

STEPS = ["train.steps=40", "train.log_every=10"]
#: What metrics.json holds that an in-memory evaluation cannot: timings, the world, the trained steps.
RUN_ONLY = {"world_size", "train_steps", "final_loss"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    file = tiny_file(root, extra="\n[evaluate.likelihood]\nn = 50\n")
    result = CliRunner().invoke(main, ["run", str(file), "--out", str(root / "run"), "-q", *_sets(STEPS)])
    assert result.exit_code == 0, result.output
    return file, root / "run"


def _sets(overrides):
    return [part for text in overrides for part in ("--set", text)]


def test_train_shows_the_progress_bar_of_flowkit_run_and_hides_it_on_request(finished, capsys):
    file, _ = finished
    pipe = flowkit.load_pipeline(file, overrides=STEPS)
    losses = pipe.train()
    err = capsys.readouterr().err
    assert "train: 100%" in err and "40/40" in err and f"loss={losses[-1][1]:.4f}" in err
    flowkit.load_pipeline(file, overrides=STEPS).train(progress=False)
    assert capsys.readouterr().err == ""


def test_evaluate_returns_the_metrics_of_flowkit_run(finished):
    file, run = finished
    pipe = flowkit.load_pipeline(file, overrides=STEPS)
    pipe.train(progress=False)
    metrics = pipe.evaluate()
    written = json.loads((run / "metrics.json").read_text())
    assert "nll" in metrics and "distance" in metrics  # the likelihood of [evaluate] likelihood too
    timings = {k for k in written if k.endswith("_seconds")}
    assert timings & metrics.keys() == {"likelihood_seconds"}
    del metrics["likelihood_seconds"]
    assert metrics == {k: v for k, v in written.items() if k not in RUN_ONLY | timings | {"sampler_captured"}}


def test_the_pipeline_and_a_finished_run_give_the_likelihood_of_flowkit_likelihood(finished):
    file, run = finished
    result = CliRunner().invoke(main, ["likelihood", str(run), "--n", "30", "--json"])
    assert result.exit_code == 0, result.output
    cli = json.loads(result.stdout)
    done = flowkit.open_run(run)
    from_run = done.likelihood(n=30)
    assert from_run["log_prob"].shape == (30,)
    assert {k: v for k, v in from_run.items() if k not in ("log_prob", "seconds")} == {
        k: v for k, v in cli.items() if k != "seconds"
    }
    pipe = flowkit.load_pipeline(file, overrides=STEPS)
    pipe.train(progress=False)
    in_memory = pipe.likelihood(n=30)
    assert torch.equal(in_memory["log_prob"], from_run["log_prob"])  # same weights, same draws
    data = done.samples[:20]
    given = done.likelihood(data, estimator="hutchinson")
    assert given["n"] == 20 and given["estimator"] == "hutchinson"
