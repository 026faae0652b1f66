"""Fault injection: a run killed with SIGKILL at random points of its writes, then resumed, ends
exactly as the run that was never killed — or, where the kill left nothing to resume, a clean one-line
refusal. Never a traceback, a silent change or lost work.

The child (tests/fault_worker.py) numbers every write of the run directory (whole files through
``write_atomic``, log lines through ``append_text``) and kills itself at one of them: part-way through
its bytes (``during``), with the temporary file complete but not yet renamed (``before-replace``), or
just after it (``after``). The points are drawn with a fixed seed from the writes the uninterrupted run
makes, so a failure names a point that can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("fault_worker.py")
SETS = ["train.steps=200", "train.checkpoint_every=100", "train.log_every=50", "report.plots=false"]
#: Kill points drawn per phase (during, before-replace, after).
TRIALS_PER_PHASE = 2


def _command(*args: str) -> list[str]:
    return [sys.executable, str(WORKER), *args]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def _environment(**fault: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
    return {**env, **fault}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run and the writes it made, ``[(index, function, name), ...]``."""
    root = tmp_path_factory.mktemp("faults")
    pipeline_file = root / "tiny.toml"
    pipeline_file.write_text(TINY.format(out=(root / "runs" / "{name}").as_posix()))
    log = root / "writes.log"
    args = _command("run", str(pipeline_file), "-q", "--out", str(root / "ref"))
    done = _run([*args, *(item for s in SETS for item in ("--set", s))], _environment(FAULT_LOG=str(log)))
    assert done.returncode == 0, done.stderr
    writes = [line.split() for line in log.read_text().splitlines()]
    return pipeline_file, root / "ref", [(int(i), function, name) for i, function, name in writes]


def _points(writes: list[tuple[int, str, str]], phase: str, seed: int) -> list[tuple[int, str, float]]:
    """``TRIALS_PER_PHASE`` points ``(event, phase, fraction)`` among the writes from the first status
    update on; always including the first checkpoint's own write. Writes before the run's status says
    "running" set up the directory; a kill there leaves no run to resume (test_run_directory covers it)."""
    first_status = next(i for i, _, name in writes if name == "status.json")
    candidates = [i for i, function, _ in writes if i >= first_status]
    if phase == "before-replace":  # only whole-file writes have a temporary file
        candidates = [i for i in candidates if writes[i][1] == "write_atomic"]
    rng = random.Random(seed)
    checkpoint = next(i for i, _, name in writes if name.startswith("checkpoint-"))
    chosen = [checkpoint, *rng.sample([i for i in candidates if i != checkpoint], TRIALS_PER_PHASE - 1)]
    return [(event, phase, round(rng.uniform(0.05, 0.95), 3)) for event in chosen]


def _assert_same_as_reference(ref: Path, run: Path, point: str) -> None:
    want, got = (torch.load(d / "model.pt", weights_only=True) for d in (ref, run))
    assert want["step"] == got["step"], point
    for name, tensor in want["model"].items():
        assert torch.equal(tensor, got["model"][name]), f"{point}: weight {name} differs"
    assert np.array_equal(np.load(ref / "samples.npy"), np.load(run / "samples.npy")), point
    ref_log = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    run_log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert run_log == ref_log, f"{point}: metrics.jsonl differs (lost, repeated or changed steps)"
    assert json.loads((run / "status.json").read_text())["state"] == "done", point
    assert not list(run.glob(".*.tmp")), f"{point}: a temporary file was left behind"


@pytest.mark.parametrize(("phase", "seed"), [("during", 1), ("before-replace", 2), ("after", 3)])
def test_a_run_killed_at_a_write_resumes_to_the_uninterrupted_run(reference, tmp_path, phase, seed):
    pipeline_file, ref, writes = reference
    for event, phase_, fraction in _points(writes, phase, seed):
        point = f"SIGKILL at write {event} ({' '.join(writes[event][1:])}, {phase_}, fraction {fraction})"
        out = tmp_path / f"killed-{event}"
        args = _command("run", str(pipeline_file), "-q", "--out", str(out))
        fault = {"FAULT_EVENT": str(event), "FAULT_PHASE": phase_, "FAULT_FRACTION": str(fraction)}
        killed = _run([*args, *(item for s in SETS for item in ("--set", s))], _environment(**fault))
        assert killed.returncode == -signal.SIGKILL, f"{point}: {killed.stderr}"
        resumed = _run(_command("resume", str(out), "-q"), _environment())
        if resumed.returncode != 0:  # the kill came after the run had finished: nothing to resume
            lines = resumed.stderr.strip().splitlines()
            assert len(lines) == 1, f"{point}: {resumed.stderr}"
            assert lines[0] == f"Error: {out}: the run is done; nothing to resume.", point
            assert writes[event][2] == "status.json" and event == writes[-1][0], point
        _assert_same_as_reference(ref, out, point)


def test_a_resume_killed_at_a_write_resumes_again_to_the_uninterrupted_run(reference, tmp_path):
    pipeline_file, ref, writes = reference
    rng = random.Random(4)
    checkpoint = next(i for i, _, name in writes if name == "checkpoint-0000100.pt")
    out = tmp_path / "twice"
    args = _command("run", str(pipeline_file), "-q", "--out", str(out))
    fault = {"FAULT_EVENT": str(checkpoint + 1), "FAULT_PHASE": "after"}  # the checkpoint recorded
    assert _run([*args, *(item for s in SETS for item in ("--set", s))], _environment(**fault)).returncode
    # the resume's own writes: killed part-way through one of its first ten
    event, fraction = rng.randrange(10), round(rng.uniform(0.05, 0.95), 3)
    point = f"resume killed at its write {event} (during, fraction {fraction})"
    fault = {"FAULT_EVENT": str(event), "FAULT_PHASE": "during", "FAULT_FRACTION": str(fraction)}
    again = _run(_command("resume", str(out), "-q"), _environment(**fault))
    assert again.returncode == -signal.SIGKILL, f"{point}: {again.stderr}"
    final = _run(_command("resume", str(out), "-q"), _environment())
    assert final.returncode == 0, f"{point}: {final.stderr}"
    _assert_same_as_reference(ref, out, point)
