"""Defects found in review, each pinned by a test: lost runs, unclear errors, unrepeatable records."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from flowkit import hookimpl
from flowkit.cli import main
from flowkit.engine import build_pipeline
from flowkit.engine.rundir import _claim, run_directory
from flowkit.errors import ConfigError, FlowkitError
from flowkit.interfaces import Component, TimeGrid
from flowkit.params import component
from flowkit.registry import PluginManager

BASE = """
data = "moons"

[path]
kind = "gaussian"

[model]
kind = "mlp"
hidden = [16]

[loss]
kind = "cfm"
"""


@pytest.fixture(scope="module")
def manager():
    return PluginManager()


def test_a_run_directory_is_claimed_by_exactly_one_run(tmp_path, write_pipeline, manager):
    pipe = build_pipeline(write_pipeline(BASE), (), manager)
    first = run_directory(pipe.run.out, pipe.source, str(tmp_path / "r"))
    second = run_directory(pipe.run.out, pipe.source, str(tmp_path / "r"))  # nothing written yet by the first
    assert first != second and second.name == "r-2"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _claim(empty) is True
    assert _claim(empty) is False


def test_out_dot_numbers_a_sibling(tmp_path, write_pipeline, manager, monkeypatch):
    pipe = build_pipeline(write_pipeline(BASE), (), manager)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert run_directory(pipe.run.out, pipe.source, ".") == tmp_path / "work-2"
    assert (work / "notes.txt").read_text() == "mine"


def test_non_finite_and_oversized_numbers_are_config_errors(write_pipeline, manager):
    path = write_pipeline(BASE)
    for override, expected in [
        ("train.lr=inf", "[train] key 'lr' (from --set): expected a finite number, found inf"),
        ("loss.logit_mean=nan", "[loss] key 'logit_mean' (from --set): expected a finite number, found nan"),
        (
            "train.lr=1" + "0" * 400,
            "[train] key 'lr' (from --set): expected a number, found an integer of 401 digits",
        ),
    ]:
        with pytest.raises(ConfigError) as err:
            build_pipeline(path, [override], manager)
        assert str(err.value) == f"{path}: {expected}"


def test_set_reaches_into_a_top_level_shorthand(write_pipeline, manager):
    pipe = build_pipeline(write_pipeline(BASE), ["data.noise=0.2"], manager)
    assert pipe.dataset.registered_name == "moons" and pipe.dataset.params.noise == 0.2


def test_an_empty_data_file_is_a_clear_error(tmp_path, write_pipeline, manager):
    (tmp_path / "empty.npy").write_bytes(b"")
    path = write_pipeline(BASE.replace('data = "moons"', 'data = { kind = "file", path = "empty.npy" }'))
    with pytest.raises(FlowkitError) as err:
        build_pipeline(path, (), manager)
    assert str(err.value).endswith("is not a readable .npy array: No data left in file")


def test_the_resolved_pipeline_finds_a_relative_data_file(tmp_path, write_pipeline, manager):
    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    path = write_pipeline(BASE.replace('data = "moons"', 'data = { kind = "file", path = "points.npy" }'))
    pipe = build_pipeline(path, (), manager)
    assert pipe.resolved()["data"]["path"] == str((tmp_path / "points.npy").resolve())


def test_a_zero_noise_floor_is_reported_not_a_crash(tmp_path, write_pipeline):
    np.save(tmp_path / "one.npy", np.array([[1.0, 2.0]], dtype=np.float32))
    path = write_pipeline(
        BASE.replace('data = "moons"', 'data = { kind = "file", path = "one.npy" }')
        + '[train]\nsteps = 5\n[sample]\nsimulator = "euler"\nsteps = 2\nn = 20\n'
        + "trajectories = 0\n[evaluate]\nn = 20\n[report]\nplots = false\n"
    )
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "ratio n/a: the noise floor is 0" in result.output
    assert f"run directory: {tmp_path / 'run'}" in result.output


def test_a_kind_added_by_a_plugin_works_as_a_nested_field(write_pipeline):
    manager = PluginManager(plugins=[("warps", WarpPlugin())])
    pipe = build_pipeline(write_pipeline(BASE + '[sample]\ngrid = "warped"\n'), (), manager)
    assert isinstance(pipe.sample.grid.params.warp, Square)


class Warp(Component):
    """A kind added by a plugin."""


class Square(Warp):
    """u -> u^2."""


class WarpedGrid(TimeGrid):
    """A uniform grid passed through a warp."""

    @attrs.define(frozen=True)
    class Params:
        warp: Warp = component("square", doc="The warp.")

    def __call__(self, steps, t_start, t_end):
        return t_start + (t_end - t_start) * torch.linspace(0, 1, steps + 1) ** 2


class WarpPlugin:
    @hookimpl
    def flowkit_register(self, registry):
        registry.add_kind("warp", Warp)
        registry.add("warp", "square", Square)
        registry.add("timegrid", "warped", WarpedGrid)


def test_one_unresolvable_annotation_leaves_the_other_fields_checked(tmp_path):
    import sys

    from flowkit.config import Location, Structurer
    from flowkit.interfaces import BuildContext

    source = (
        "from __future__ import annotations\n"
        "import attrs\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from nowhere import Missing\n"
        "@attrs.define(frozen=True)\n"
        "class Params:\n"
        "    steps: int = 1\n"
        "    other: Missing = None\n"
    )
    (tmp_path / "half_typed.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        import half_typed

        structurer = Structurer(PluginManager(entrypoints=False).registry, BuildContext())
        warned = pytest.warns(UserWarning, match=r"half_typed\.Params\.other: annotation 'Missing' cannot be")
        refused = pytest.raises(ConfigError, match=r"key 'steps': expected an integer, found \"lots\"")
        with warned, refused:
            structurer.structure(half_typed.Params, {"steps": "lots"}, Location("f.toml", ("grid",)))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("half_typed", None)
