"""Shared fixtures: fake installed distributions that register plugins through real entry points."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


#: A pipeline with ``data`` given by the top-level shorthand, and no ``[train]`` table.
SHORTHAND = """
data = "moons"

[path]
kind = "gaussian"

[model]
kind = "mlp"
hidden = [16]

[loss]
kind = "cfm"
"""


@pytest.fixture
def make_distribution(tmp_path, monkeypatch):
    """Create ``NAME-VERSION.dist-info`` with a ``flowkit`` entry point and its module on ``sys.path``.

    ``make_distribution("my-dist", "1.2", {"myplug": "my_module"}, {"my_module": "source"})`` makes
    ``importlib.metadata`` see an installed distribution, exactly as pip would leave it.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    added: list[str] = []

    def make(dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[flowkit]\n{lines}\n")
        for module, source in modules.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            added.append(module)
        importlib.invalidate_caches()
        return info

    yield make
    for module in added:
        sys.modules.pop(module, None)


@pytest.fixture
def write_pipeline(tmp_path):
    """Write a pipeline file from text; returns its path."""

    def write(text: str, name: str = "pipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


TINY = """
[run]
seed = 3
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

[train]
steps = 60
batch_size = 64
log_every = 20

[sample]
simulator = "euler"
steps = 8
n = 200
trajectories = 16

[evaluate]
n = 200
"""


@pytest.fixture
def tiny_pipeline(write_pipeline, tmp_path):
    """A pipeline that trains and samples in well under a second."""
    return write_pipeline(TINY.format(out=(tmp_path / "runs" / "{name}").as_posix()), "tiny.toml")


def tiny_file(
    tmp_path: Path,
    extra: str = "",
    name: str = "tiny.toml",
    replace: dict[str, str] | None = None,
    plots: bool = False,
) -> Path:
    """The tiny pipeline file, with ``replace`` substitutions of its text and ``extra`` tables appended;
    without plots unless asked (matplotlib takes longer than the whole run)."""
    text = TINY.format(out=(tmp_path / "runs" / "{name}").as_posix())
    if not plots:
        text += "\n[report]\nplots = false\n"
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text + textwrap.dedent(extra))
    return path


def hook_plugin(name: str, **hooks: Any) -> tuple[str, Any]:
    """A ``(name, plugin)`` pair of hook functions (each marked ``@hookimpl``)."""
    from flowkit import hookimpl

    return name, type(f"Plugin_{name}", (), {k: staticmethod(hookimpl(v)) for k, v in hooks.items()})()


def registering_plugin(name: str, *entries: tuple[str, str, type]) -> tuple[str, Any]:
    """A ``(name, plugin)`` pair registering each ``(kind, component name, class)`` of ``entries``."""

    def flowkit_register(registry):
        for kind, component, cls in entries:
            registry.add(kind, component, cls)

    return hook_plugin(name, flowkit_register=flowkit_register)
