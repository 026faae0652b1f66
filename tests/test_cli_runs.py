"""The commands that use a run directory again (resume, sample, evaluate) and the messages of bad
inputs found by fuzzing: each one line on stderr, exit status 1, no traceback."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from flowkit.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("cli")
    pipeline = root / "tiny.toml"
    pipeline.write_text(TINY.format(out=(root / "runs" / "{name}").as_posix()))
    out = root / "run"
    result = invoke("-p", "no:report", "run", pipeline, "--out", out, "-q", "--set", "train.steps=30")
    assert result.exit_code == 0, result.output
    return pipeline, out


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_sample_evaluate_and_resume_commands(finished):
    _, out = finished
    sampled = invoke(
        "sample", out, "--n", "100", "--set", "sample.simulator=euler", "--set", "sample.steps=5"
    )
    assert sampled.exit_code == 0, sampled.output
    assert sampled.output == (
        f"100 samples (euler, 5 steps, nfe = 5) from {out / 'model.pt'} (step 30)\n"
        f"written to {out / 'samples-euler-5.npy'}\n"
    )
    assert np.load(out / "samples-euler-5.npy").shape == (100, 2)
    evaluated = invoke("evaluate", out, "--set", "evaluate.metric=energy")
    assert evaluated.exit_code == 0, evaluated.output
    assert (
        evaluated.output.startswith("energy = ")
        and f"written to {out / 'metrics-evaluate.json'}" in evaluated.output
    )
    done = invoke("resume", out)
    assert _error(done) == (
        f"Error: {out}: the run is done; nothing to resume. To train further: flowkit resume {out} "
        "--set train.steps=M with M > 30 (written into a new run directory)"
    )


def test_a_malicious_weights_file_is_refused_in_one_line(finished, tmp_path):
    _, out = finished
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("pipeline.toml", "status.json"):
        (victim / name).write_bytes((out / name).read_bytes())

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > PWNED",))

    torch.save({"model": Exploit()}, victim / "model.pt")
    line = _error(invoke("sample", victim))
    assert line.startswith(f"Error: {victim / 'model.pt'}: refused: the file holds more than tensors (")
    assert line.endswith(
        "flowkit loads weights only and never runs code from a file. Was it written by flowkit?"
    )
    assert not os.path.exists("PWNED")


def test_an_unwritable_run_directory_is_a_clear_error(finished, tmp_path):
    pipeline, _ = finished
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = _error(invoke("run", pipeline, "--out", blocker / "run", "--set", "train.steps=2"))
    assert line == (
        f"Error: cannot create the run directory {blocker / 'run'}: not a directory; "
        "choose another with --out or [run] out"
    )


def test_a_data_path_that_is_a_directory(write_pipeline, tmp_path):
    (tmp_path / "data.npy").mkdir()
    pipeline = write_pipeline("""
        [data]
        kind = "file"
        path = "data.npy"
        [path]
        kind = "gaussian"
        [model]
        kind = "mlp"
        [loss]
        kind = "cfm"
    """)
    line = _error(invoke("validate", pipeline))
    assert line.endswith(f"data file '{tmp_path / 'data.npy'}' is a directory; expected a .npy or .pt file")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "steps=5",
            "--set steps=5: 'steps' names no table; expected TABLE.KEY=VALUE, e.g. --set train.steps=5",
        ),
        ("model.hidden=[64,", "--set model.hidden=[64,: invalid TOML value: "),
        (
            "run.device={kind='cpu', threads=1000000000000}",
            "[run.device] key 'threads' (from --set): invalid value",
        ),
        ("train.batch_size=1000000000000", "[train] key 'batch_size': 1000000000000 points need at least"),
        (
            "evaluate.floor_repeats=9223372036854775808",
            "[evaluate] key 'floor_repeats' (from --set): invalid",
        ),
        (
            "model.hidden=[100000, 100000]",
            "[model] key 'hidden' (model 'mlp'): building it ran out of memory (",
        ),
        ("sample.n=10000000000", "[sample] key 'n': 10000000000 samples (16 trajectories of 8 steps) need"),
    ],
)
def test_fuzzing_findings_are_one_line_errors(finished, override, message):
    pipeline, _ = finished
    line = _error(invoke("validate", pipeline, "--set", override))
    assert line.startswith(f"Error: {pipeline}: ")
    assert message in line
