"""Reflow (plugins/flowkit_flowmaps/reflow.py, flowkit/engine/teacher.py): the pairs of a planted
teacher written out by hand, drawn once per run and read back by a resume (bitwise, even with the
teacher gone), [train] init from the teacher's weights, nothing drawn at build (validate) time, and
one error line for a missing or unfinished teacher."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY

from flowkit import hookimpl
from flowkit.engine import build_pipeline, resume_run, run_pipeline
from flowkit.engine.components import set_up, stage_context
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.teacher import start_from_init
from flowkit.errors import FlowkitError
from flowkit.interfaces import stage_seed
from flowkit.testing import make_manager

STUDENT = textwrap.dedent(
    """
    [run]
    seed = 5
    out = "{out}"

    [data]
    kind = "moons"

    [path]
    kind = "gaussian"
    schedule = {{ kind = "ot" }}

    [model]
    kind = "mlp"
    hidden = [32, 32]

    [loss]
    kind = "cfm"
    coupling = {{ kind = "reflow", teacher = "{teacher}", pairs = 300 }}

    [train]
    steps = 6
    batch_size = 32
    log_every = 2
    checkpoint_every = 2
    init = "{teacher}"

    [sample]
    simulator = "euler"
    steps = 1
    n = 50
    trajectories = 0

    [evaluate]
    n = 50
    """
)


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, manager) -> Path:
    """A finished tiny CFM run sampled by one Euler step, so its pairs are x1 = x0 + v(x0, 0)."""
    root = tmp_path_factory.mktemp("teacher")
    text = TINY.format(out=(root / "run").as_posix()).replace("steps = 8", "steps = 1")
    (root / "teacher.toml").write_text(text.replace("steps = 60", "steps = 20"))
    pipe = build_pipeline(root / "teacher.toml", [], manager)
    return run_pipeline(pipe, manager, out=str(root / "run"), quiet=True, command="test").directory


def student_file(tmp_path: Path, teacher: Path | str) -> Path:
    """The student pipeline in tmp_path/cfg/, naming the teacher relative to that folder."""
    folder = tmp_path / "cfg"
    folder.mkdir(exist_ok=True)
    relative = os.path.relpath(teacher, folder) if Path(teacher).is_absolute() else teacher
    path = folder / "student.toml"
    path.write_text(STUDENT.format(out=(tmp_path / "runs" / "{name}").as_posix(), teacher=relative))
    return path


def test_a_planted_teacher_gives_its_pairs_written_out_by_hand(tmp_path, teacher, manager):
    import flowkit

    pipe = build_pipeline(student_file(tmp_path, teacher), [], manager)
    coupling = pipe.loss.params.coupling
    assert coupling.x0 is None  # building (flowkit validate) draws nothing
    set_up(pipe, "train", tmp_path)
    # by hand: the teacher's prior draws from the student's reflow seed, then one Euler step of its model
    seed = stage_seed(stage_seed(5, "setup:reflow"), "sample")
    x0 = torch.randn((300, 2), generator=torch.Generator().manual_seed(seed))
    model = flowkit.open_run(teacher).pipeline
    velocity = model.pipeline.context.roles["velocity"]
    with torch.no_grad():
        x1 = x0 + velocity(x0, torch.zeros(300))
    assert torch.equal(coupling.x0, x0)
    assert torch.allclose(coupling.x1, x1, rtol=0, atol=1e-5)  # the simulator rounds its step its own way
    # a batch is rows of the pairs, picked by the generator it is given
    g = torch.Generator().manual_seed(0)
    a0, a1, y = coupling(torch.zeros(32, 2), torch.zeros(32, 2), None, g)
    pick = torch.randint(0, 300, (32,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a0, x0[pick]) and torch.equal(a1, coupling.x1[pick]) and y is None
    assert (tmp_path / "reflow-pairs.pt").is_file()


def test_the_student_starts_from_the_teacher_s_weights(tmp_path, teacher, manager):
    pipe = build_pipeline(student_file(tmp_path, teacher), [], manager)
    start_from_init(pipe)
    kept = torch.load(teacher / "model.pt", weights_only=True)["model"]
    mine = pipe.model.state_dict()
    assert mine.keys() == kept.keys() and all(torch.equal(mine[k], kept[k]) for k in kept)


def _stop_at(step: int):
    class Stopper:
        @staticmethod
        @hookimpl
        def flowkit_train_step(run, step: int, loss) -> None:
            if step == Stopper.target and run.resumed_from is None:
                os.kill(os.getpid(), signal.SIGINT)

    Stopper.target = step  # type: ignore[attr-defined]
    return "stopper", Stopper()


def test_pairs_are_drawn_once_and_a_resume_is_bitwise_the_uninterrupted_run(tmp_path, teacher, manager):
    file = student_file(tmp_path, teacher)
    whole = run_pipeline(build_pipeline(file, [], manager), manager, out=str(tmp_path / "whole"), quiet=True)
    stopping = make_manager(warn=False, plugins=[_stop_at(3)])
    with pytest.raises(Interrupted):
        run_pipeline(build_pipeline(file, [], stopping), stopping, out=str(tmp_path / "cut"), quiet=True)
    # with the teacher gone, the resumed run reads its pairs from its own directory
    hidden = teacher.with_name("hidden")
    teacher.rename(hidden)
    try:
        resumed = resume_run(tmp_path / "cut", manager, quiet=True, command="test")
    finally:
        hidden.rename(teacher)
    a = torch.load(whole.directory / "reflow-pairs.pt", weights_only=True)
    b = torch.load(resumed.directory / "reflow-pairs.pt", weights_only=True)
    assert torch.equal(a["x0"], b["x0"]) and torch.equal(a["x1"], b["x1"])
    wa = torch.load(whole.directory / "model.pt", weights_only=True)["model"]
    wb = torch.load(resumed.directory / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (whole.directory / "samples.npy").read_bytes() == (resumed.directory / "samples.npy").read_bytes()


def test_a_missing_or_unfinished_teacher_is_one_line_when_training_starts(tmp_path, manager):
    missing = tmp_path / "nowhere"
    pipe = build_pipeline(student_file(tmp_path, missing), [], manager)  # validate does not look
    context = stage_context(pipe, "train", None)
    with pytest.raises(FlowkitError) as err:
        pipe.loss.params.coupling.setup(context)
    assert str(err.value) == f"{missing}: no such run directory (a teacher must be a finished run)"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "pipeline.toml").write_text("[run]\n")
    (unfinished / "status.json").write_text('{"state": "interrupted"}')
    pipe = build_pipeline(student_file(tmp_path, unfinished), [], manager)
    with pytest.raises(FlowkitError) as err:
        pipe.loss.params.coupling.setup(stage_context(pipe, "train", None))
    assert str(err.value) == (
        f"{unfinished}: the run has not finished training (state: interrupted; no model.pt); finish it "
        f"with: flowkit resume {unfinished}"
    )
    with pytest.raises(FlowkitError, match=r"\[train\] init = '../unfinished': .*not finished training"):
        start_from_init(pipe)


def test_reflow_and_shortcut_pass_the_component_checks():
    from flowkit_flowmaps.reflow import Reflow
    from flowkit_flowmaps.shortcut import ShortcutLoss

    from flowkit.testing import check_component

    check_component("coupling", Reflow)
    check_component("loss", ShortcutLoss)


def test_a_teacher_of_another_shape_is_named(tmp_path, teacher, manager):
    pipe = build_pipeline(student_file(tmp_path, teacher), [], manager)
    coupling = pipe.loss.params.coupling
    coupling.setup(stage_context(pipe, "train", None))
    with pytest.raises(
        FlowkitError, match=r"samples points of shape \(2,\), but this pipeline's data has shape \(3,\)"
    ):
        coupling(torch.zeros(4, 3), torch.zeros(4, 3))


class OnlyHere:
    """A plugin of this test alone: the Euler simulator under a name no installed plugin registers."""

    @staticmethod
    @hookimpl
    def flowkit_register(registry):
        from flowkit_simulators.simulators import EulerSimulator

        registry.add("simulator", "test-only-euler", EulerSimulator)


def test_the_teacher_is_built_with_the_student_s_plugins(tmp_path, teacher, manager):
    """A teacher sampled by a simulator only the student's plugin manager knows still draws its pairs
    (built with the installed plugins instead, it would not build: no simulator 'test-only-euler'),
    and they are bitwise those of the same sampler under its usual name."""
    mine = make_manager(warn=False, plugins=[("only-here", OnlyHere())])
    text = (teacher / "pipeline.toml").read_text()
    usual = '[sample.simulator]\nkind = "euler"\n'
    assert usual in text
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "pipeline.toml").write_text(text.replace(usual, usual.replace("euler", "test-only-euler")))
    (planted / "model.pt").write_bytes((teacher / "model.pt").read_bytes())
    drawn = {}
    for name, run, plugins in (("usual", teacher, manager), ("only-here", planted, mine)):
        (tmp_path / name).mkdir()
        pipe = build_pipeline(student_file(tmp_path / name, run), [], plugins)
        pipe.loss.params.coupling.setup(stage_context(pipe, "train", None))
        drawn[name] = pipe.loss.params.coupling
    assert torch.equal(drawn["usual"].x0, drawn["only-here"].x0)
    assert torch.equal(drawn["usual"].x1, drawn["only-here"].x1)
