"""Inputs that gave tracebacks: a plugin that exits while registering, ``.npy`` data of another byte
order or an unsupported dtype, integers too long for Python to read, a size too large to build. Each
is one line naming what is at fault.

Planted bugs these catch: ``except Exception`` around a plugin's registration (``SystemExit`` ends
every command), a plugin that failed half-way keeping its components, big-endian data passed to
``torch.from_numpy``, long double let through to torch, the TOML parser's ``ValueError`` escaping, a
build overflow shown as torch's ``RuntimeError``.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY
from flowkit_data.files import FileDataset

from flowkit.cli import main
from flowkit.config import parse_override, read_toml
from flowkit.engine import build_pipeline
from flowkit.errors import ConfigError, FlowkitError
from flowkit.registry import FlowkitPluginWarning, PluginManager
from flowkit.testing import make_manager

LIMIT = sys.get_int_max_str_digits()

_EXITS = """
import sys
from flowkit import hookimpl
from flowkit.interfaces import TimeGrid
import attrs, torch

class Grid(TimeGrid):
    @attrs.define(frozen=True)
    class Params:
        pass
    def __call__(self, steps, t_start=0.0, t_end=1.0):
        return torch.linspace(t_start, t_end, steps + 1)

@hookimpl
def flowkit_register(registry):
    registry.add("timegrid", "half-done", Grid)
    {raise_it}
"""


@pytest.mark.parametrize(
    ("raise_it", "shown"),
    [("sys.exit(5)", "SystemExit: 5"), ("raise GeneratorExit()", "GeneratorExit")],
)
def test_a_plugin_exiting_while_registering_is_named_blocked_and_the_rest_goes_on(
    make_distribution, raise_it, shown
):
    make_distribution(
        "flowkit-exits", "1.0", {"exits": "exits_plugin"}, {"exits_plugin": _EXITS.format(raise_it=raise_it)}
    )
    with pytest.warns(FlowkitPluginWarning):
        manager = PluginManager()
    [problem] = manager.problems
    assert problem.message == (
        f"plugin 'exits' (flowkit-exits 1.0) raised in flowkit_register: {shown}; it was blocked"
    )
    assert "exits" not in manager.plugins and manager.pm.get_plugin("exits") is None  # its hooks too
    assert "half-done" not in manager.registry.names("timegrid")  # what it registered before is gone
    assert "uniform" in manager.registry.names("timegrid")
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"flowkit: warning: {problem.message}\n")


def test_a_plugin_exiting_on_import_is_named_and_ctrl_c_still_stops(make_distribution):
    make_distribution(
        "flowkit-quits",
        "2.0",
        {"quits": "quits_plugin", "stops": "stops_plugin"},
        {
            "quits_plugin": "class Odd(BaseException):\n    pass\nraise Odd('no')\n",
            "stops_plugin": "from flowkit import hookimpl\n"
            "@hookimpl\ndef flowkit_register(registry):\n    raise KeyboardInterrupt\n",
        },
    )
    with pytest.raises(KeyboardInterrupt), pytest.warns(FlowkitPluginWarning) as caught:
        PluginManager()
    assert [str(w.message) for w in caught] == [
        "plugin 'quits' (flowkit-quits 2.0) failed to import 'quits_plugin': Odd: no"
    ]


def _refusal(tmp_path, array, name="data.npy"):
    np.save(tmp_path / name, array)
    with pytest.raises(FlowkitError) as err:
        FileDataset(FileDataset.Params(path=str(tmp_path / name)))
    return str(err.value)


def test_npy_data_of_either_byte_order_is_read_and_other_dtypes_are_refused_by_name(tmp_path):
    native = np.arange(12, dtype=np.float32).reshape(6, 2)
    for order in (">", "<"):
        for dtype in ("f2", "f4", "f8"):
            np.save(tmp_path / "d.npy", native.astype(f"{order}{dtype}"))
            data = FileDataset(FileDataset.Params(path=str(tmp_path / "d.npy"))).data
            assert data.dtype == torch.float32 and torch.equal(data, torch.from_numpy(native))
    accepted = "float16, float32 or float64, either byte order (convert with array.astype(numpy.float32))"
    cases = {
        "int64": native.astype(">i8"),
        "float128 (long double)": native.astype(np.longdouble),
        "complex64": native.astype(np.complex64),
        "a structured dtype [('x', '<f4'), ('y', '<f4')]": np.zeros(6, dtype=[("x", "<f4"), ("y", "<f4")]),
    }
    for shown, array in cases.items():
        assert _refusal(tmp_path, array) == (
            f"data file '{tmp_path / 'data.npy'}' holds {shown} values; expected floating point samples: "
            + accepted
        )


def test_an_integer_too_long_to_read_is_refused_by_key(tmp_path):
    digits = "9" * (LIMIT + 700)
    path = tmp_path / "pipe.toml"
    path.write_text(f"[run]\nseed = 1\n\n[train]\nlr = 1e-3\nsteps = {digits}\n")
    with pytest.raises(ConfigError) as err:
        read_toml(path)
    assert str(err.value) == (
        f"{path}: [train] key 'steps' (line 6): an integer of {LIMIT + 700} digits; flowkit reads "
        f"integers of at most {LIMIT} digits"
    )
    with pytest.raises(ConfigError) as err:
        parse_override(f"train.steps={digits}")
    shown = f"train.steps={digits}"[:77] + "..."
    assert str(err.value) == (
        f"--set {shown}: an integer of {LIMIT + 700} digits; flowkit reads integers of at most {LIMIT} digits"
    )


def test_a_layer_too_wide_to_build_is_refused_by_key(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(out=(tmp_path / "runs").as_posix()))
    with pytest.raises(ConfigError) as err:
        build_pipeline(path, [f"model.hidden=[32, {2**62}]"], make_manager(warn=False))
    assert str(err.value) == (
        f"{path}: [model] key 'hidden' (model 'mlp'): building it is too large to address (Storage size "
        f"calculation overflowed with sizes=[{2**62}, 32]); make it smaller"
    )
