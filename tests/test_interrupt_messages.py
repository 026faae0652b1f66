"""What an interrupted run says is true: "nothing new was trained" only when no step was completed
since the run (re)started; after a second Ctrl-C, which stops at once, the steps lost are named."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY

from flowkit import hookimpl
from flowkit.engine import build_pipeline, resume_run, run_pipeline
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.rundir import read_status
from flowkit.testing import make_manager

STEPS = ["train.steps=60", "train.checkpoint_every=20", "train.log_every=10"]


def _plugin(**hooks: Any) -> tuple[str, Any]:
    return "signaller", type("Signaller", (), {k: staticmethod(hookimpl(v)) for k, v in hooks.items()})()


def _run(pipeline_file: Path, manager, out: Path):
    pipe = build_pipeline(pipeline_file, STEPS, manager)
    return run_pipeline(pipe, manager, out=str(out), quiet=True, command="test")


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupts")
    path = root / "tiny.toml"
    path.write_text(TINY.format(out=(root / "runs" / "{name}").as_posix()))
    return path


def _double_ctrl_c_at(target: int) -> tuple[str, Any]:
    """Ctrl-C twice at the end of step ``target``: the first waits for the step's checkpoint, the
    second stops at once, before that checkpoint is written."""

    def flowkit_train_step(run, step: int, loss) -> None:
        if step == target and run.resumed_from is None:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    return _plugin(flowkit_train_step=flowkit_train_step)


def test_a_second_ctrl_c_names_the_steps_lost_and_the_checkpoint_kept(pipeline_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as err:
        _run(pipeline_file, make_manager(warn=False, plugins=[_double_ctrl_c_at(30)]), out)
    message = (
        f"{pipeline_file}: interrupted by SIGINT at training step 30 of 60 before a checkpoint of it was "
        "written (a second signal stops at once); steps 21 to 30 are lost and it continues from "
        f"{out / 'checkpoint-0000020.pt'} (step 20). Continue with: flowkit resume {out}"
    )
    assert str(err.value) == message and "nothing new was trained" not in message
    status = read_status(out)
    assert status is not None and status["message"] == message
    recorded = (status["state"], status["step"], status["checkpoint"])
    assert recorded == ("interrupted", 20, "checkpoint-0000020.pt")


def test_a_second_ctrl_c_before_any_checkpoint_says_the_run_starts_again(pipeline_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupted) as err:
        _run(pipeline_file, make_manager(warn=False, plugins=[_double_ctrl_c_at(5)]), out)
    assert str(err.value) == (
        f"{pipeline_file}: interrupted by SIGINT at training step 5 of 60 before a checkpoint of it was "
        "written (a second signal stops at once); steps 1 to 5 are lost and no checkpoint was written, "
        f"so it starts again from step 0. Continue with: flowkit resume {out}"
    )


def test_nothing_new_was_trained_is_said_only_before_the_first_step(pipeline_file, tmp_path):
    def flowkit_run_start(run) -> None:
        if run.resumed_from == 20:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        _run(pipeline_file, make_manager(warn=False, plugins=[_double_ctrl_c_at(30)]), out)
    stopper = make_manager(warn=False, plugins=[_plugin(flowkit_run_start=flowkit_run_start)])
    with pytest.raises(Interrupted) as err:
        resume_run(out, stopper, quiet=True, command="test")
    assert str(err.value) == (
        f"{out / 'pipeline.toml'}: interrupted by SIGINT before training step 21; nothing new was "
        f"trained. Continue with: flowkit resume {out}"
    )
    resume_run(out, make_manager(warn=False), quiet=True, command="test")
    reference = _run(pipeline_file, make_manager(warn=False), tmp_path / "ref").directory
    a, b = torch.load(out / "model.pt"), torch.load(reference / "model.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (out / "samples.npy").read_bytes() == (reference / "samples.npy").read_bytes()
