"""Every file flowkit reads back from a run directory is verified: digests in ``manifest.json`` and
every field of a checkpoint checked against the pipeline before anything of it is loaded.

Each damaged checkpoint must be skipped with its exact reason and the run resumed from the previous
good one, ending bitwise as the run left alone; a damaged resolved ``pipeline.toml`` is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY

from flowkit import hookimpl
from flowkit.engine import build_pipeline, evaluate_run, resume_run, run_pipeline, sample_run
from flowkit.engine.checkpoints import load_state, save_state
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.manifest import MANIFEST, read_manifest
from flowkit.errors import FlowkitError
from flowkit.testing import make_manager

STEPS = ["train.steps=60", "train.checkpoint_every=20", "train.log_every=10"]
DIGEST = "its sha256 differs from the one recorded in manifest.json (the file was changed or cut short)"


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def _run(pipeline_file, manager, out):
    pipe = build_pipeline(pipeline_file, STEPS, manager)
    return run_pipeline(pipe, manager, out=str(out), quiet=True, command="test")


def _stop_at(step: int) -> tuple[str, Any]:
    class Stopper:
        @staticmethod
        @hookimpl
        def flowkit_train_step(run, step: int, loss) -> None:
            if step == Stopper.target and run.resumed_from is None:
                os.kill(os.getpid(), signal.SIGINT)

    Stopper.target = step  # type: ignore[attr-defined]
    return "stopper", Stopper()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, manager):
    """The run left alone, and one stopped at step 50 (checkpoints at 20, 40 and 50)."""
    root = tmp_path_factory.mktemp("verified")
    pipeline_file = root / "tiny.toml"
    pipeline_file.write_text(TINY.format(out=(root / "runs" / "{name}").as_posix()))
    reference = _run(pipeline_file, manager, root / "ref").directory
    stopped = root / "stopped"
    with pytest.raises(Interrupted):
        _run(pipeline_file, make_manager(warn=False, plugins=[_stop_at(50)]), stopped)
    return reference, stopped


@pytest.fixture
def stopped(runs, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(runs[1], copy)
    return copy


def _same_run(a: Path, b: Path) -> None:
    wa, wb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"]), "final weights differ"
    assert (a / "samples.npy").read_bytes() == (b / "samples.npy").read_bytes(), "samples.npy differs"


def _resume(directory: Path, manager) -> list[str]:
    warnings: list[str] = []
    resume_run(directory, manager, quiet=True, warn=warnings.append, command="test")
    return warnings


def test_the_manifest_records_every_file_read_back(stopped):
    manifest = read_manifest(stopped)
    assert manifest is not None and manifest["pending"] == {}
    names = ["checkpoint-0000020.pt", "checkpoint-0000040.pt", "checkpoint-0000050.pt", "pipeline.toml"]
    assert sorted(manifest["files"]) == names


def test_flipped_weight_bits_are_caught_by_the_digest_and_the_previous_one_used(runs, stopped, manager):
    newest = stopped / "checkpoint-0000050.pt"
    state = torch.load(newest, weights_only=True)
    weight = next(iter(state["raw"].values()))
    weight.view(torch.int32).view(-1)[0] ^= 1  # the lowest mantissa bit: still finite
    assert bool(torch.isfinite(weight).all())
    torch.save(state, newest)  # not through flowkit: the manifest keeps the digest of the file it wrote
    assert _resume(stopped, manager) == [f"skipped {newest}: {DIGEST}"]
    _same_run(runs[0], stopped)


def _tamper(state: dict[str, Any], field: str) -> None:
    first = next(iter(state["raw"]))
    if field == "negative step":
        state["step"] = -50
    elif field == "fractional step":
        state["step"] = 50.5
    elif field == "shape":
        state["raw"][first] = torch.zeros(3, 3)
    elif field == "generator":
        state["generators"]["data"] = torch.zeros(7, dtype=torch.uint8)
        state["rank_generators"] = [state["generators"]]
    elif field == "optimizer moment":
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(5)
    elif field == "optimizer groups":
        state["optimizer"]["param_groups"][0]["params"] = [0, 1]


FIELDS = {
    "negative step": "its step is -50, below 0",
    "fractional step": "its step is float 50.5, not an integer",
    "shape": "its 'raw' weight net.0.weight is a float32 tensor of shape [3, 3]; the pipeline's [model] "
    "has shape [32, 3]",
    "generator": "its 'data' generator state (rank 0) is a uint8 tensor of shape [7]; a generator of cpu "
    "takes a uint8 tensor of shape [5056]",
    "optimizer moment": "its optimizer state of parameter 0 has exp_avg a float32 tensor of shape [5]; "
    "the parameter has shape [32, 3]",
    "optimizer groups": "its optimizer state covers 2 parameters; the pipeline's [model] has 6",
}


@pytest.mark.parametrize("field", FIELDS)
def test_a_checkpoint_field_that_does_not_fit_is_skipped_with_its_reason(runs, stopped, manager, field):
    newest = stopped / "checkpoint-0000050.pt"
    state = load_state(newest)
    _tamper(state, field)
    save_state(newest, state)  # through flowkit: its digest is right, only the field check catches it
    assert _resume(stopped, manager) == [f"skipped {newest}: {FIELDS[field]}"]
    _same_run(runs[0], stopped)


def test_a_file_flowkit_did_not_write_is_skipped(runs, stopped, manager):
    planted = stopped / "checkpoint-0000055.pt"
    shutil.copy(stopped / "checkpoint-0000050.pt", planted)
    assert _resume(stopped, manager) == [
        f"skipped {planted}: not recorded in manifest.json (flowkit did not write it)"
    ]
    _same_run(runs[0], stopped)


def test_a_cut_pipeline_is_refused_by_resume_sample_and_evaluate(runs, stopped, manager):
    resolved = stopped / "pipeline.toml"
    text = resolved.read_text()
    resolved.write_text(text[: text.index("[train]")])  # cut before [train]: the defaults would train
    message = (
        f"{resolved}: {DIGEST}; flowkit will not guess the settings the run was trained with: put back "
        "the file flowkit wrote (from a copy), or start a new run with `flowkit run`"
    )
    for command in (
        lambda: resume_run(stopped, manager, quiet=True, command="test"),
        lambda: sample_run(stopped, manager, n=10),
        lambda: evaluate_run(stopped, manager, ["sample.steps=2"]),
    ):
        with pytest.raises(FlowkitError) as err:
            command()
        assert str(err.value) == message
    assert not (stopped / "model.pt").exists()  # nothing was trained


def test_a_changed_model_file_is_refused_when_sampling(runs, tmp_path, manager):
    done = tmp_path / "done"
    shutil.copytree(runs[0], done)
    weights = done / "model.pt"
    state = torch.load(weights, weights_only=True)
    torch.save(state, weights, _use_new_zipfile_serialization=False)  # the same weights, other bytes
    with pytest.raises(FlowkitError) as err:
        sample_run(done, manager, n=10)
    assert str(err.value) == f"{weights}: {DIGEST}"


def test_a_run_written_before_manifests_resumes_as_before_and_is_then_recorded(runs, stopped, manager):
    (stopped / MANIFEST).unlink()
    assert _resume(stopped, manager) == []  # no manifest: read unverified, without a word, as before
    _same_run(runs[0], stopped)
    manifest = read_manifest(stopped)
    assert manifest is not None and "checkpoint-0000050.pt" in manifest["files"]


def test_a_kill_between_a_write_and_its_record_leaves_a_file_that_verifies(stopped, manager):
    """The digest is recorded as pending before the file is written: a kill after the write but
    before the manifest's final update leaves a file that still matches."""
    manifest = json.loads((stopped / MANIFEST).read_text())
    name = "checkpoint-0000050.pt"
    manifest["pending"][name] = manifest["files"].pop(name)
    (stopped / MANIFEST).write_text(json.dumps(manifest))
    assert _resume(stopped, manager) == []


def test_a_damaged_manifest_is_refused_in_one_line(stopped, manager):
    (stopped / MANIFEST).write_text("{")
    with pytest.raises(FlowkitError) as err:
        resume_run(stopped, manager, quiet=True, command="test")
    assert str(err.value) == (
        f"{stopped / MANIFEST}: unreadable manifest (not JSON); the run's files cannot be verified "
        "without it. Restore it, or remove it to read the run unverified (as a run of an older flowkit) "
        "at your own risk"
    )
