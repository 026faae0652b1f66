"""The run directory: claimed by exactly one run, never a directory that holds the user's files."""

from __future__ import annotations

import pytest
from conftest import SHORTHAND

from flowkit.engine import build_pipeline
from flowkit.engine.rundir import _claim, run_directory
from flowkit.testing import make_manager


@pytest.fixture(scope="module")
def manager():
    return make_manager()


def test_a_run_directory_is_claimed_by_exactly_one_run(tmp_path, write_pipeline, manager):
    pipe = build_pipeline(write_pipeline(SHORTHAND), (), manager)
    first = run_directory(pipe.run.out, pipe.source, str(tmp_path / "r"))
    second = run_directory(pipe.run.out, pipe.source, str(tmp_path / "r"))  # nothing written yet by the first
    assert first != second and second.name == "r-2"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _claim(empty) is True
    assert _claim(empty) is False


def test_out_dot_numbers_a_sibling(tmp_path, write_pipeline, manager, monkeypatch):
    pipe = build_pipeline(write_pipeline(SHORTHAND), (), manager)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert run_directory(pipe.run.out, pipe.source, ".") == tmp_path / "work-2"
    assert (work / "notes.txt").read_text() == "mine"
