"""Every file of a run directory, damaged every way a disk or a person damages it, under every command
that reads the run: each ends in success or in one line on stderr (exit status 1) — never a traceback,
and never a silent change of what was trained.

The damages: emptied, overwritten with other bytes, replaced by a folder, removed. The commands:
``flowkit resume`` of an interrupted run, ``flowkit sample`` and ``flowkit evaluate`` of a finished one.
A command that succeeds after its damage must still give what the undamaged run gives (the trained
weights are never replaced by other ones without a word).
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY

from flowkit import hookimpl
from flowkit.cli import main
from flowkit.engine import build_pipeline, run_pipeline
from flowkit.engine.interrupts import Interrupted
from flowkit.testing import make_manager

pytestmark = pytest.mark.slow

DAMAGES = ("empty", "garbage", "folder", "removed")
SETS = ["train.steps=40", "train.checkpoint_every=10", "train.log_every=10", "train.keep_checkpoints=2"]


def _invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


class _StopAt25:
    @staticmethod
    @hookimpl
    def flowkit_train_step(run, step, loss):
        if step == 25 and run.resumed_from is None:
            signal.raise_signal(signal.SIGTERM)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run and one interrupted at step 25 (checkpoints at 10 and 20 kept, and the 25 of
    the interrupt), each with the report plugin's metrics.jsonl."""
    root = tmp_path_factory.mktemp("damaged")
    pipeline_file = root / "tiny.toml"
    pipeline_file.write_text(TINY.format(out=(root / "runs" / "{name}").as_posix()))
    manager = make_manager(warn=False)
    overrides = [*SETS, "sample.trajectories=0", "report.plots=false"]
    finished = run_pipeline(
        build_pipeline(pipeline_file, overrides, manager), manager, out=str(root / "finished"), quiet=True
    ).directory
    stopper = make_manager(warn=False, plugins=[("stopper", _StopAt25())])
    with pytest.raises(Interrupted):
        run_pipeline(
            build_pipeline(pipeline_file, overrides, stopper), stopper, out=str(root / "stopped"), quiet=True
        )
    return finished, root / "stopped"


def _damage(file: Path, how: str) -> None:
    if file.is_dir():
        shutil.rmtree(file)
    else:
        file.unlink(missing_ok=True)
    if how == "empty":
        file.write_bytes(b"")
    elif how == "garbage":
        file.write_bytes(bytes(range(256)) * 7)
    elif how == "folder":
        file.mkdir()


def _cases(kind: str) -> list[str]:
    if kind == "stopped":
        return [
            "pipeline.toml",
            "manifest.json",
            "status.json",
            "metrics.jsonl",
            "checkpoint-0000025.pt",
            "checkpoint-0000020.pt",
            "run.lock",
        ]
    return ["pipeline.toml", "manifest.json", "status.json", "model.pt", "samples.npy", "metrics.json"]


def _one_line_or_success(result, case: str) -> bool:
    """Whether the command succeeded; fails the test on a traceback or a message of several lines."""
    assert "Traceback" not in result.output, f"{case}: {result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{case}: {type(result.exception).__name__}: {result.exception}")
    if result.exit_code == 0:
        return True
    assert result.exit_code == 1, f"{case}: exit {result.exit_code}: {result.output}"
    errors = [line for line in result.output.strip().splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, f"{case}: {result.output}"
    return False


#: What must succeed whatever the damage (a checkpoint is skipped; the lock file is made again) and
#: what must be refused (the run's settings have no other copy). A damaged status.json is refused
#: with the line that says to remove it.
RESUMES = {"checkpoint-0000025.pt", "checkpoint-0000020.pt", "run.lock"}
REFUSED = {"pipeline.toml"}


@pytest.mark.parametrize("how", DAMAGES)
def test_resuming_a_run_with_a_damaged_file(runs, tmp_path, how):
    finished, stopped = runs
    for name in _cases("stopped"):
        case = f"resume with {name} {how}"
        run = tmp_path / f"{name}-{how}"
        shutil.copytree(stopped, run)
        _damage(run / name, how)
        result = _invoke("resume", run, "-q")
        resumed = _one_line_or_success(result, case)
        if name in RESUMES and not (name == "run.lock" and how == "folder"):
            assert resumed, f"{case}: {result.output}"
        if name in REFUSED:
            assert not resumed, case
        if resumed:
            # whatever it resumed from, the run ended as the uninterrupted one did, bitwise
            assert np.array_equal(np.load(run / "samples.npy"), np.load(finished / "samples.npy")), case


@pytest.mark.parametrize("how", DAMAGES)
def test_sampling_and_evaluating_a_run_with_a_damaged_file(runs, tmp_path, how):
    finished, _ = runs
    reference = _invoke("sample", finished, "--n", "50", "--out", tmp_path / "reference.npy")
    assert reference.exit_code == 0, reference.output
    for name in _cases("finished"):
        run = tmp_path / f"{name}-{how}"
        shutil.copytree(finished, run)
        _damage(run / name, how)
        out = tmp_path / f"{name}-{how}.npy"
        if _one_line_or_success(_invoke("sample", run, "--n", "50", "--out", out), f"sample: {name} {how}"):
            assert np.array_equal(np.load(out), np.load(tmp_path / "reference.npy")), f"{name} {how}"
        _one_line_or_success(_invoke("evaluate", run), f"evaluate: {name} {how}")
