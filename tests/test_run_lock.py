"""One process owns a run directory at a time: the lock on ``run.lock`` (flowkit.engine.lock).

Planted bugs these catch: no lock taken by resume (two resumes both proceed), a lock taken but never
released (a second command after the first is refused), a message telling the user to stop a process
that does not hold the run (a stale or reused pid), ``sample`` into a run under way not refused, a
``running`` status.json with a live but unrelated pid refusing the resume.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_file

from flowkit import hookimpl
from flowkit.cli import main
from flowkit.engine import build_pipeline, resume_run, run_pipeline
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.lock import LOCK_FILE, RunLocked, hold_run, take
from flowkit.engine.rundir import read_status
from flowkit.testing import make_manager

STEPS = ["train.steps=40", "train.checkpoint_every=20", "train.log_every=10"]


class _Interrupter:
    @hookimpl
    def flowkit_train_step(self, run, step, loss):
        if step == 20 and run.resumed_from is None:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def interrupted(tmp_path) -> Path:
    """A run stopped by SIGINT at step 20 of 40 (checkpoint-0000020.pt, status interrupted)."""
    manager = make_manager(warn=False, plugins=[("interrupter", _Interrupter())])
    pipeline = build_pipeline(tiny_file(tmp_path), STEPS, manager)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_pipeline(pipeline, manager, out=str(out), quiet=True, command="flowkit run tiny.toml")
    assert read_status(out)["state"] == "interrupted"
    return out


def _held_line(directory: Path, command: str, pid: int) -> str:
    """The message up to the time it names (which the test cannot know)."""
    return f"{directory}: the run is in use by `{command}` (process {pid} on {socket.gethostname()}, since "


def test_a_second_owner_is_told_who_holds_the_run_and_the_lock_ends_with_its_holder(tmp_path):
    with hold_run(tmp_path, "flowkit run a.toml"):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "flowkit run a.toml"
        with pytest.raises(RunLocked) as err:
            take(tmp_path, "flowkit resume x")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(_held_line(tmp_path, "flowkit run a.toml", os.getpid()))
    assert text.endswith(
        f"); wait for it to end, or stop it (Ctrl-C, or kill -TERM {os.getpid()}, which saves a "
        "checkpoint) and try again"
    )
    assert (tmp_path / LOCK_FILE).read_text() == ""  # emptied when let go
    with hold_run(tmp_path, "flowkit resume x"):  # and free again
        pass


def test_a_pid_that_no_longer_holds_the_lock_is_never_named_as_one_to_stop(tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()
    sleeper = subprocess.Popen(["sleep", "60"])  # alive, unrelated: never holds the run
    try:
        for pid in (ended.pid, sleeper.pid):
            with hold_run(tmp_path, "flowkit run a.toml"):
                # what a forked child of an ended holder leaves: the lock held, the file naming its parent
                (tmp_path / LOCK_FILE).write_text(
                    json.dumps(
                        {
                            "pid": pid,
                            "host": socket.gethostname(),
                            "command": "flowkit run a.toml",
                            "since": "T",
                        }
                    )
                )
                with pytest.raises(RunLocked) as err:
                    take(tmp_path, "flowkit resume x")
            assert str(err.value) == (
                f"{tmp_path}: the run is in use: locked by `flowkit run a.toml` (process {pid} on "
                f"{socket.gethostname()}, since T), which has ended, but a process it started still holds "
                "the lock; wait for it to end"
            )
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_running_status_left_by_a_killed_process_does_not_stop_resume(interrupted):
    # a kill -9 leaves `running` with the pid of a process that is gone, or that another process has
    # taken since: only the lock says whether the run is in use, and nobody holds it
    status = json.loads((interrupted / "status.json").read_text())
    status.update(state="running", pid=1, host=socket.gethostname())
    (interrupted / "status.json").write_text(json.dumps(status))
    (interrupted / ".model.pt.ab12cd34.tmp").write_bytes(b"half a file")  # a write cut short by the kill
    (interrupted / "notes.tmp").write_text("mine")  # not flowkit's: kept
    resumed = resume_run(interrupted, make_manager(warn=False), quiet=True, command="flowkit resume run")
    assert read_status(resumed.directory)["state"] == "done"
    assert not (interrupted / ".model.pt.ab12cd34.tmp").exists()
    assert (interrupted / "notes.tmp").read_text() == "mine"


def test_sampling_into_a_run_in_use_is_refused_and_elsewhere_it_is_not(interrupted, tmp_path):
    with hold_run(interrupted, "flowkit resume run"):
        result = CliRunner().invoke(main, ["sample", str(interrupted), "--n", "16"])
        assert result.exit_code == 1
        assert result.output.startswith(
            f"Error: {_held_line(interrupted, 'flowkit resume run', os.getpid())}"
        )
        assert result.output.count("\n") == 1
        other = tmp_path / "elsewhere.npy"
        result = CliRunner().invoke(main, ["sample", str(interrupted), "--n", "16", "--out", str(other)])
        assert result.exit_code == 0, result.output
        assert other.is_file()


_RESUMER = """
import sys, time
from pathlib import Path
from flowkit import hookimpl
from flowkit import registry

go = Path(sys.argv[1])

class Wait:
    # holds the run (the lock is taken before this hook) until the test says go
    @hookimpl
    def flowkit_run_start(run):
        for _ in range(6000):
            if go.exists():
                return
            time.sleep(0.01)

original = registry.PluginManager.__init__
def with_wait(self, *args, plugins=(), **kwargs):
    original(self, *args, plugins=[*plugins, ("wait", Wait)], **kwargs)
registry.PluginManager.__init__ = with_wait

from flowkit.cli import main
sys.argv = ["flowkit", "resume", sys.argv[2], "--quiet"]
main()
"""


def test_two_resumes_started_together_one_proceeds_the_other_is_told_who_holds_the_run(interrupted, tmp_path):
    script = tmp_path / "resumer.py"
    script.write_text(textwrap.dedent(_RESUMER))
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(go), str(interrupted)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        for turn in range(24000):  # the one refused ends while the other waits holding the run
            try:
                procs[turn % 2].wait(timeout=0.005)
                break
            except subprocess.TimeoutExpired:
                continue
        go.touch()
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], outputs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    refused = outputs[loser][1]
    assert refused.count("\n") == 1, refused
    assert refused.startswith(
        "Error: " + _held_line(interrupted, f"flowkit resume {interrupted} --quiet", procs[winner].pid)
    ), refused
    assert outputs[winner][0] == f"run directory: {interrupted}\n"
    assert read_status(interrupted)["state"] == "done"
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]  # one training wrote the log: no step twice, none out of order
