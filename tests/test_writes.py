"""Every write fails cleanly (flowkit.files): a full disk, a read-only directory or an interrupt gives
one line naming the file and what to do, the previous file stays, no temporary file is left; files
honour the umask; the metrics log is never read or written through a link, and a damaged one stops a
resume in one line without marking the run failed at a step it never reached.

Planted bugs these catch: the temporary file kept on an interrupt, torch's own error (``enforce fail
at inline_container.cc``) shown for a full disk, files created 0600 whatever the umask, ``open(...,
"a")`` on metrics.jsonl (writes through a link), the failed status given the run's last step.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_file

from flowkit import files, hookimpl
from flowkit.cli import main
from flowkit.engine import build_pipeline, run_pipeline
from flowkit.engine.interrupts import Interrupted
from flowkit.engine.rundir import read_status, write_atomic
from flowkit.errors import FlowkitError
from flowkit.testing import make_manager


def _only(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path):
    target = tmp_path / "status.json"
    write_atomic(target, lambda handle: handle.write(b"good"))

    def full(handle):
        handle.write(b"ha")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(FlowkitError) as err:
        write_atomic(target, full)
    assert str(err.value) == (
        f"cannot write {target}: no space left on device; free space on the disk of {tmp_path} and run "
        "the command again"
    )
    assert target.read_bytes() == b"good" and _only(tmp_path) == ["status.json"]


def test_a_read_only_directory_names_the_file_and_what_to_do(tmp_path, monkeypatch):
    def refused(*args, **kwargs):  # what mkstemp meets in a read-only directory (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(FlowkitError) as err:
        write_atomic(tmp_path / "model.pt", lambda handle: handle.write(b"x"))
    assert str(err.value) == (
        f"cannot write {tmp_path / 'model.pt'}: permission denied; make {tmp_path} writable, or choose "
        "another directory"
    )


def test_an_interrupt_during_a_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "model.pt"
    write_atomic(target, lambda handle: handle.write(b"good"))

    def interrupted(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, interrupted)
    assert target.read_bytes() == b"good" and _only(tmp_path) == ["model.pt"]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        written = write_atomic(tmp_path / "samples.npy", lambda handle: handle.write(b"x"))
        files.append_text(tmp_path / "metrics.jsonl", "{}\n")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == mode
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == mode


_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
from flowkit.cli import main
sys.argv = ["flowkit", "run", *sys.argv[1:]]
main()
"""


def test_a_checkpoint_past_the_disk_limit_is_one_line_recorded_and_leaves_no_temporary(tmp_path):
    pipeline = tiny_file(tmp_path)
    out = tmp_path / "run"
    script = tmp_path / "limited.py"
    script.write_text(_LIMITED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script), str(pipeline), "--out", str(out), "--quiet", "--set", "train.steps=40",
         "--set", "train.checkpoint_every=20"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    line = (
        f"cannot write {out / 'checkpoint-0000020.pt'}: file too large; the file exceeds the size this "
        "process may write (ulimit -f); raise the limit and run again"
    )
    assert (done.returncode, done.stderr) == (1, f"Error: {line}\n")
    assert not [name for name in _only(out) if name.endswith(".tmp")]
    status = read_status(out)
    assert (status["state"], status["stage"], status["message"]) == ("failed", "train", line)


class _Interrupter:
    @hookimpl
    def flowkit_train_step(self, run, step, loss):
        if step == 20 and run.resumed_from is None:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def interrupted(tmp_path) -> Path:
    manager = make_manager(warn=False, plugins=[("interrupter", _Interrupter())])
    steps = ["train.steps=40", "train.checkpoint_every=20", "train.log_every=10"]
    pipeline = build_pipeline(tiny_file(tmp_path), steps, manager)
    with pytest.raises(Interrupted):
        run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True, command="flowkit run")
    return tmp_path / "run"


def _damage(log: Path, how: str, outside: Path) -> str:
    if how == "link":
        outside.write_text("precious\n")
        log.unlink()
        log.symlink_to(outside)
        return (
            f"{log}: the metrics log is a symbolic link; flowkit reads and writes no file through one: "
            "remove it (or replace it by the file it points to)"
        )
    if how == "directory":
        log.unlink()
        log.mkdir()
        return f"{log}: the metrics log is a directory; move it away"
    log.write_bytes(b'{"step": 10}\n\xff\xfe\n')
    return f"{log}: the metrics log is not UTF-8 text (byte 13); move it away or remove it"


@pytest.mark.parametrize("how", ["link", "directory", "not-utf8"])
def test_a_damaged_metrics_log_stops_resume_in_one_line_at_the_checkpoint_step(interrupted, tmp_path, how):
    outside = tmp_path / "outside.txt"
    line = _damage(interrupted / "metrics.jsonl", how, outside)
    result = CliRunner().invoke(main, ["resume", str(interrupted), "--quiet"])
    assert (result.exit_code, result.output) == (1, f"Error: {line}\n")
    status = read_status(interrupted)
    assert (status["state"], status["stage"], status["step"]) == ("failed", "start", 20)
    assert status["resume"] == f"flowkit resume {interrupted}"
    if how == "link":
        assert outside.read_text() == "precious\n"


def test_the_log_is_appended_without_following_a_link(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (tmp_path / "metrics.jsonl").symlink_to(outside)
    with pytest.raises(FlowkitError) as err:
        files.append_text(tmp_path / "metrics.jsonl", json.dumps({"step": 1}) + "\n")
    assert str(err.value) == (
        f"cannot write {tmp_path / 'metrics.jsonl'}: it is a symbolic link; flowkit writes no file "
        "through one: remove it"
    )
    assert outside.read_text() == "precious\n"


def test_torch_save_failing_names_the_cause_not_torch(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint-0000001.pt"
    calls = {"n": 0}
    real = os.fdopen

    class Full:
        def __init__(self, raw):
            self.raw = raw

        def write(self, data):
            calls["n"] += 1
            if calls["n"] > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.raw.write(data)

        def __getattr__(self, name):
            return getattr(self.raw, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.raw.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    with pytest.raises(FlowkitError) as err:
        write_atomic(target, lambda handle: torch.save({"w": torch.zeros(100_000)}, handle))
    assert str(err.value).startswith(f"cannot write {target}: no space left on device; free space")
    assert _only(tmp_path) == []
