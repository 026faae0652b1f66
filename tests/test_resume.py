"""Runs that survive: checkpoints of the whole state, resume, signals, status, divergence, reuse.

The bitwise tests compare a run that was stopped (SIGKILL, SIGINT, SIGTERM, an injected NaN) and
resumed with the same run left alone: the final weights and ``samples.npy`` must be identical.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY

from flowkit import hookimpl
from flowkit.engine import build_pipeline, evaluate_run, resume_run, run_pipeline, sample_run
from flowkit.engine.checkpoints import FORMAT, list_checkpoints, load_state, newest_checkpoint
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.lock import RunLocked, hold_run
from flowkit.engine.rundir import read_status, write_atomic
from flowkit.errors import ConfigError, FlowkitError
from flowkit.testing import make_manager

STEPS = ["train.steps=60", "train.checkpoint_every=20", "train.log_every=10"]


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


def _plugin(name: str, **hooks: Any) -> tuple[str, Any]:
    return name, type(f"Plugin_{name}", (), {k: staticmethod(hookimpl(v)) for k, v in hooks.items()})()


def _run(pipeline_file, manager, out, *overrides):
    pipe = build_pipeline(pipeline_file, [*STEPS, *overrides], manager)
    return run_pipeline(pipe, manager, out=str(out), quiet=True, command="test")


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    state = torch.load(directory / "model.pt", weights_only=True)
    return {f"{which}.{name}": t for which in ("model", "raw") for name, t in state[which].items()}


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
    assert (a / "samples.npy").read_bytes() == (b / "samples.npy").read_bytes(), "samples.npy differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, manager):
    """The uninterrupted run every resumed one is compared with."""
    root = tmp_path_factory.mktemp("reference")
    pipeline_file = root / "tiny.toml"
    pipeline_file.write_text(TINY.format(out=(root / "runs" / "{name}").as_posix()))
    return pipeline_file, _run(pipeline_file, manager, root / "ref").directory


def _signal_at(step: int, signum: int) -> tuple[str, Any]:
    def flowkit_train_step(run, step: int, loss) -> None:
        if step == _signal_at.target and run.resumed_from is None:
            os.kill(os.getpid(), signum)

    _signal_at.target = step  # type: ignore[attr-defined]
    return _plugin("signaller", flowkit_train_step=flowkit_train_step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_step_and_resume_is_bitwise_identical(reference, tmp_path, signum):
    pipeline_file, ref = reference
    manager = make_manager(warn=False, plugins=[_signal_at(33, signum)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted) as err:
        _run(pipeline_file, manager, out)
    name = signal.Signals(signum).name
    assert err.value.exit_code == 128 + signum
    assert str(err.value).endswith(
        f"interrupted by {name} at training step 33 of 60; the training state is saved in "
        f"{out / 'checkpoint-0000033.pt'}. Continue with: flowkit resume {out}"
    )
    status = read_status(out)
    assert status is not None
    assert (status["state"], status["step"], status["resume"]) == ("interrupted", 33, f"flowkit resume {out}")
    assert [step for step, _ in list_checkpoints(out)] == [20, 33]
    assert not (out / "samples.npy").exists()
    resumed = resume_run(out, manager, quiet=True, command="test")
    assert resumed.directory == out and resumed.metrics["resumed_from_step"] == 33
    _assert_same_run(ref, out)
    assert read_status(out)["state"] == "done"
    # the log holds each logged step once, as the uninterrupted run's does
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def _pause(seconds: float) -> None:
    threading.Event().wait(seconds)


def _wait_for(path: Path, proc: subprocess.Popen, polls: int = 12000) -> None:
    """Poll every 10 ms (at most ``polls`` times) until ``path`` exists; the run must still be going."""
    for _ in range(polls):
        if path.exists():
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "the run ended early"
        _pause(0.01)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.slow
def test_sigkill_after_the_first_checkpoint_then_resume_matches_the_uninterrupted_run(tmp_path):
    pipeline_file = tmp_path / "tiny.toml"
    pipeline_file.write_text(TINY.format(out=(tmp_path / "runs" / "{name}").as_posix()))
    sets = ["train.steps=1500", "train.checkpoint_every=100", "train.log_every=100"]
    args = [sys.executable, "-m", "flowkit", "run", str(pipeline_file), "-q"]
    args += [item for s in sets for item in ("--set", s)]
    env = {**os.environ, "FLOWKIT_DISABLE_PLUGINS": "report"}
    ref = tmp_path / "ref"
    subprocess.run([*args, "--out", str(ref)], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], env=env, stderr=subprocess.PIPE)
    try:
        _wait_for(killed / "checkpoint-0000100.pt", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.pt").exists(), "the run finished before it was killed: make it longer"
    status = read_status(killed)
    assert status is not None and status["state"] == "killed"  # written "running" by a process now gone
    assert status["resume"] == f"flowkit resume {killed}"
    done = subprocess.run(
        [sys.executable, "-m", "flowkit", "resume", str(killed), "-q"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    _assert_same_run(ref, killed)


@pytest.mark.slow
def test_sigterm_while_sampling_keeps_the_weights_and_says_how_to_sample_again(tmp_path):
    pipeline_file = tmp_path / "tiny.toml"
    pipeline_file.write_text(TINY.format(out=(tmp_path / "runs" / "{name}").as_posix()))
    out = tmp_path / "run"
    sets = ["train.steps=20", "sample.simulator=euler", "sample.steps=2000000", "sample.trajectories=0"]
    args = [sys.executable, "-m", "flowkit", "run", str(pipeline_file), "-q", "--out", str(out)]
    proc = subprocess.Popen(
        [*args, *(item for s in sets for item in ("--set", s))], stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(out / "model.pt", proc)
        _pause(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert stderr.strip().endswith(
        f"interrupted by SIGTERM while sampling; the trained weights are in {out / 'model.pt'}; sample and "
        f"evaluate again with: flowkit resume {out} (or `flowkit sample {out}` for samples only)"
    )
    assert read_status(out)["state"] == "interrupted"
    assert (out / "model.pt").is_file() and not (out / "samples.npy").exists()


def _poison_at(step: int) -> tuple[str, Any]:
    """Make the weights NaN right after the update of ``step`` (first run only)."""

    def flowkit_train_step(run, step: int, loss) -> None:
        if step == _poison_at.target and run.resumed_from is None:
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))

    _poison_at.target = step  # type: ignore[attr-defined]
    return _plugin("poison", flowkit_train_step=flowkit_train_step)


def test_divergence_names_its_step_keeps_only_finite_checkpoints_and_resumes(reference, tmp_path):
    pipeline_file, ref = reference
    manager = make_manager(warn=False, plugins=[_poison_at(45)])
    out = tmp_path / "div"
    with pytest.raises(FlowkitError) as err:
        _run(pipeline_file, manager, out)
    message = str(err.value)
    # the NaN weights of step 45 make the loss of step 46 NaN; found at the log step 50 without a sync
    assert "training diverged at step 46 (loss nan)" in message
    assert (
        f"the last good checkpoint is {out / 'checkpoint-0000040.pt'} (step 40); resume from it with a lower "
        f"learning rate: flowkit resume {out} --set train.lr=0.0001" in message
    )
    assert [step for step, _ in list_checkpoints(out)] == [20, 40]
    for _, path in list_checkpoints(out):
        state = load_state(path)
        assert all(torch.isfinite(t).all() for t in state["raw"].values())
    status = read_status(out)
    assert (status["state"], status["step"], status["checkpoint"]) == (
        "diverged",
        46,
        "checkpoint-0000040.pt",
    )
    resume_run(out, manager, quiet=True, command="test")  # same lr: the poison is gone, so it matches
    _assert_same_run(ref, out)


def test_weights_poisoned_on_a_checkpoint_step_are_never_saved(reference, tmp_path):
    pipeline_file, _ = reference
    manager = make_manager(warn=False, plugins=[_poison_at(40)])
    with pytest.raises(
        FlowkitError, match=r"training diverged at step 40 \(non-finite weights after the update\)"
    ):
        _run(pipeline_file, manager, tmp_path / "div")
    assert [step for step, _ in list_checkpoints(tmp_path / "div")] == [20]


def test_resume_with_a_lower_learning_rate_uses_it_from_the_first_step(reference, tmp_path, manager):
    pipeline_file, _ = reference
    poisoned = make_manager(warn=False, plugins=[_poison_at(45)])
    out = tmp_path / "div"
    with pytest.raises(FlowkitError):
        _run(pipeline_file, poisoned, out)
    seen: list[float] = []

    def flowkit_log(run, step, metrics) -> None:
        seen.append(metrics["lr"])

    watcher = make_manager(warn=False, plugins=[_plugin("lr", flowkit_log=flowkit_log)])
    run = resume_run(out, watcher, ["train.lr=1e-4"], quiet=True, command="flowkit resume")
    assert run.pipeline.train.lr == 1e-4
    # the cosine factor at the logged steps, times the new peak rate
    factor = run.pipeline.train and __import__("flowkit.engine.optim", fromlist=["lr_factor"]).lr_factor
    expected = [1e-4 * factor(run.pipeline.train)(step) for step in (50, 60)]
    assert seen == pytest.approx(expected, rel=1e-12)
    resolved = (out / "pipeline.toml").read_text()
    assert "lr = 0.0001" in resolved and "step 40: flowkit resume" in resolved


def test_resume_refuses_what_it_cannot_continue(reference, tmp_path, manager):
    _, ref = reference
    with pytest.raises(FlowkitError) as err:
        resume_run(ref, manager, quiet=True)
    assert str(err.value) == (
        f"{ref}: the run is done; nothing to resume. To train further: flowkit resume {ref} "
        "--set train.steps=M with M > 60 (written into a new run directory)"
    )
    with pytest.raises(ConfigError, match=r"--set model.hidden=\[8\]: a resumed run keeps its \[model\]"):
        resume_run(ref, manager, ["model.hidden=[8]"], quiet=True)
    with pytest.raises(ConfigError, match=r"--set run.seed=1: a resumed run keeps its \[run\] seed"):
        resume_run(ref, manager, ["run.seed=1"], quiet=True)
    with pytest.raises(FlowkitError, match="no such run directory"):
        resume_run(tmp_path / "nope", manager)
    live = tmp_path / "live"
    live.mkdir()
    (live / "pipeline.toml").write_text((ref / "pipeline.toml").read_text())
    (live / "status.json").write_text(
        json.dumps({"state": "running", "pid": os.getpid(), "host": os.uname().nodename})
    )
    with hold_run(live, "flowkit run live.toml"), pytest.raises(RunLocked) as err:
        resume_run(live, manager)
    assert str(err.value).startswith(
        f"{live}: the run is in use by `flowkit run live.toml` (process {os.getpid()}"
    )


def test_extending_a_finished_run_writes_a_new_directory(reference, tmp_path, manager):
    pipeline_file, _ = reference
    run = _run(pipeline_file, manager, tmp_path / "done")
    before = {p.name: p.read_bytes() for p in run.directory.iterdir()}
    extended = resume_run(run.directory, manager, ["train.steps=80"], quiet=True, command="extend")
    assert extended.directory == tmp_path / "done-2"
    assert {p.name: p.read_bytes() for p in run.directory.iterdir()} == before  # untouched
    assert extended.metrics["train_steps"] == 80 and extended.metrics["resumed_from_step"] == 60
    assert torch.load(extended.directory / "model.pt", weights_only=True)["step"] == 80
    assert 'history = [\n    "step 60: extend",\n]' in (extended.directory / "pipeline.toml").read_text()


def test_a_tampered_checkpoint_is_refused_in_one_line_and_an_older_one_used(reference, tmp_path, manager):
    pipeline_file, ref = reference
    stopper = make_manager(warn=False, plugins=[_signal_at(50, signal.SIGINT)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        _run(pipeline_file, stopper, out)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    newest = out / "checkpoint-0000050.pt"
    torch.save({"format": FORMAT, "step": 50, "x": Exploit()}, newest)
    with pytest.raises(FlowkitError) as err:
        load_state(newest)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{newest}: refused: the file holds more than tensors")
    assert "flowkit loads weights only and never runs code from a file" in text
    (out / "checkpoint-0000040.pt").write_bytes(b"truncated")
    state, path, skipped = newest_checkpoint(out)
    assert path == out / "checkpoint-0000020.pt" and state["step"] == 20
    assert len(skipped) == 2 and "not a readable weights file" in skipped[1]
    warnings: list[str] = []
    resume_run(out, manager, quiet=True, warn=warnings.append, command="test")
    assert len(warnings) == 2 and not Path("PWNED").exists()
    _assert_same_run(ref, out)  # resumed from step 20, still the same run


def test_foreign_weights_files_give_one_line_errors(tmp_path):
    from flowkit.engine.checkpoints import load_checkpoint, load_weights

    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.ones(2)}, plain)
    with pytest.raises(
        FlowkitError, match=r"plain\.pt: not a flowkit checkpoint \(no 'flowkit-checkpoint-1'"
    ):
        load_checkpoint(plain)
    with pytest.raises(FlowkitError, match=r"plain\.pt: no 'model' weights \(has: none\)"):
        load_weights(plain, torch.nn.Linear(2, 2))
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(FlowkitError, match=r"list\.pt: not a flowkit weights file \(it holds a list"):
        load_state(listed)
    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {"weight": torch.ones(3, 3)}}, wrong)
    with pytest.raises(FlowkitError, match=r"its 'model' weights do not fit the pipeline's \[model\]"):
        load_weights(wrong, torch.nn.Linear(2, 2))
    with pytest.raises(FlowkitError, match="no such file"):
        load_state(tmp_path / "missing.pt")
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(FlowkitError, match=r"pickled\.pt: "):
        load_state(pickled)


def test_atomic_writes_fsync_and_never_leave_a_partial_file(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "file.bin"
    write_atomic(target, lambda handle: handle.write(b"old"))
    assert target.read_bytes() == b"old" and len(synced) == 2  # the file, then its directory

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temporary file left behind


def test_sample_and_evaluate_reuse_the_trained_weights_and_never_overwrite(reference, manager, tmp_path):
    _, ref = reference
    metrics = json.loads((ref / "metrics.json").read_text())
    path, again = evaluate_run(ref, manager)
    assert path == ref / "metrics-evaluate.json"
    assert again["distance"] == metrics["distance"]  # the same samples and held-out data, measured again
    assert evaluate_run(ref, manager)[0] == ref / "metrics-evaluate-2.json"
    energy = evaluate_run(ref, manager, ["evaluate.metric=energy"])[1]
    assert energy["metric"] == "energy" and energy["distance"] > 0
    first, record = sample_run(ref, manager, n=300, overrides=["sample.simulator=euler", "sample.steps=4"])
    assert first == ref / "samples-euler-4.npy" and record["nfe"] == 4
    assert np.load(first).shape == (300, 2)
    second, _ = sample_run(ref, manager, n=300, overrides=["sample.simulator=euler", "sample.steps=4"])
    assert second == ref / "samples-euler-4-2.npy"
    assert np.array_equal(np.load(first), np.load(second))  # same seed, same weights
    # the run's own samples come back bitwise from the weights alone
    same, _ = sample_run(ref, manager, out=tmp_path / "same.npy")
    assert np.array_equal(np.load(same), np.load(ref / "samples.npy"))
    with pytest.raises(FlowkitError, match=r"same\.npy exists; flowkit never overwrites a file"):
        sample_run(ref, manager, out=tmp_path / "same.npy")
    with pytest.raises(
        ConfigError, match=r"--set train\.lr=1: `flowkit sample` uses the trained model as it is"
    ):
        sample_run(ref, manager, overrides=["train.lr=1"])
    with pytest.raises(ConfigError, match=r"--out x\.txt: samples are written as a \.npy file"):
        sample_run(ref, manager, out="x.txt")


def test_a_taken_out_file_is_refused_before_sampling_or_measuring(reference, manager, tmp_path, monkeypatch):
    import flowkit.engine.reuse as reuse

    _, ref = reference
    taken = tmp_path / "taken.npy"
    taken.write_bytes(b"the user's file")
    taken_json = tmp_path / "taken.json"
    taken_json.write_text("{}")

    def no_sampling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sampled before refusing the --out file")

    monkeypatch.setattr(reuse, "draw_samples", no_sampling)
    monkeypatch.setattr(reuse, "load_trained", no_sampling)
    with pytest.raises(FlowkitError, match=r"taken\.npy exists; flowkit never overwrites a file"):
        sample_run(ref, manager, out=taken)
    with pytest.raises(FlowkitError, match=r"taken\.json exists; flowkit never overwrites a file"):
        evaluate_run(ref, manager, ["sample.steps=2"], out=taken_json)
    assert taken.read_bytes() == b"the user's file"


def test_sampling_an_unfinished_run_uses_its_newest_checkpoint(reference, tmp_path):
    pipeline_file, _ = reference
    stopper = make_manager(warn=False, plugins=[_signal_at(30, signal.SIGTERM)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        _run(pipeline_file, stopper, out)
    notes: list[str] = []
    _, record = sample_run(out, stopper, n=50, note=notes.append)
    assert record["weights"] == f"{out / 'checkpoint-0000030.pt'} (step 30: training has not finished)"
    assert notes == [f"training of {out} has not finished: using the checkpoint at step 30"]
    with pytest.raises(FlowkitError, match=r"no samples\.npy \(the run did not finish sampling\)"):
        evaluate_run(out, stopper)


def test_rerunning_the_resolved_pipeline_reproduces_the_run(reference, manager, tmp_path):
    _, ref = reference
    pipe = build_pipeline(ref / "pipeline.toml", (), manager)
    again = run_pipeline(pipe, manager, out=str(tmp_path / "again"), quiet=True)
    _assert_same_run(ref, again.directory)


def test_sampling_an_unfinished_run_skips_a_damaged_newest_checkpoint(reference, tmp_path):
    pipeline_file, _ = reference
    stopper = make_manager(warn=False, plugins=[_signal_at(30, signal.SIGTERM)])
    out = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        _run(pipeline_file, stopper, out)
    newest, older = out / "checkpoint-0000030.pt", out / "checkpoint-0000020.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit: the file still loads, its digest does not match
    newest.write_bytes(bytes(data))
    notes: list[str] = []
    _, record = sample_run(out, stopper, n=50, note=notes.append)
    assert record["weights"] == f"{older} (step 20: training has not finished)"
    assert notes[0].startswith(f"skipped {newest}: ")
    assert "manifest" in notes[0]
    assert notes[1] == f"training of {out} has not finished: using the checkpoint at step 20"
    older.write_bytes(older.read_bytes()[:100])  # cut short: no usable checkpoint is left
    with pytest.raises(FlowkitError, match=rf"{out}: no usable checkpoint: all 2 failed their checks"):
        sample_run(out, stopper, n=50)


def test_evaluating_a_big_endian_samples_file_gives_the_native_files_metrics(reference, manager, tmp_path):
    _, ref = reference
    native = np.load(ref / "samples.npy")
    swapped = tmp_path / "big-endian.npy"
    np.save(swapped, native.astype(">f4"))
    _, from_native = evaluate_run(ref, manager, samples_file=ref / "samples.npy", out=tmp_path / "a.json")
    _, from_swapped = evaluate_run(ref, manager, samples_file=swapped, out=tmp_path / "b.json")
    assert from_swapped["distance"] == from_native["distance"]
    long_double = tmp_path / "long.npy"
    np.save(long_double, native.astype(np.longdouble))
    with pytest.raises(FlowkitError, match=r"long\.npy: holds float128 values; convert them with"):
        evaluate_run(ref, manager, samples_file=long_double)
