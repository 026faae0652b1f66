"""Property-based fuzzing of the pipeline loader and ``--set``: any input gives a pipeline or a
:class:`FlowkitError` naming where the problem is, never another exception.

The documents are built from the real tables and keys (so most reach the validators of a component,
not only the unknown-key check) with hostile values: huge and negative integers, non-finite floats,
wrong types, strings where tables go, and nesting far deeper than any pipeline needs.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flowkit.engine import build_pipeline
from flowkit.errors import FlowkitError
from flowkit.registry import PluginManager
from flowkit.testing import make_manager

TABLE_KEYS: dict[str, list[str]] = {
    "run": ["seed", "device", "out"],
    "data": ["kind", "noise", "factor", "squares", "preset", "means", "weights", "stds", "path"],
    "path": ["kind", "schedule", "sigma_min", "sigma_max", "beta_min", "beta_max"],
    "model": ["kind", "hidden", "activation", "time_features"],
    "loss": ["kind", "time_sampling", "weighting", "eps"],
    "train": ["steps", "batch_size", "lr", "lr_schedule", "ema_decay", "log_every", "checkpoint_every"],
    "sample": ["simulator", "dynamics", "grid", "steps", "n", "trajectories"],
    "evaluate": ["metric", "n", "floor_repeats"],
    "report": ["progress", "plots", "log"],
}
NAMES = ["moons", "circles", "gaussian", "ot", "vp", "mlp", "cfm", "dsm", "heun", "euler", "w2", "cpu", "x"]

BASE: dict[str, Any] = {
    "data": {"kind": "moons"},
    "path": {"kind": "gaussian", "schedule": {"kind": "ot"}},
    "model": {"kind": "mlp", "hidden": [8]},
    "loss": {"kind": "cfm"},
    "train": {"steps": 1, "batch_size": 4},
    "sample": {"steps": 2, "n": 8, "trajectories": 0},
    "evaluate": {"n": 8, "floor_repeats": 1},
}

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**12, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(NAMES),
    st.text(max_size=12),
)


def nested(depth: int) -> st.SearchStrategy[Any]:
    """A list or inline table nested ``depth`` levels deep (deep enough to break naive recursion)."""

    def build(value: Any) -> Any:
        for i in range(depth):
            value = [value] if i % 2 else {"kind": value}
        return value

    return scalars.map(build)


sizes = st.sampled_from([0, -3, 2**16, 10**6, 2**31, 10**12, 2**63, 2**64])
typed = st.one_of(sizes, st.lists(sizes, min_size=1, max_size=3), st.sampled_from([1e308, -1e308, 1e-320]))
values = st.recursive(
    st.one_of(scalars, typed, st.integers(10, 3000).flatmap(nested)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from([*NAMES, "kind", "sigma_min", "threads", "hidden"]), inner, max_size=3
        ),
    ),
    max_leaves=8,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A pipeline: the base one with tables replaced, keys added or set to hostile values."""
    doc = {table: dict(content) for table, content in BASE.items()}
    for _ in range(draw(st.integers(1, 4))):
        table = draw(st.sampled_from([*TABLE_KEYS, "steps", "extra"]))
        key = draw(st.sampled_from(TABLE_KEYS.get(table, ["kind", "x"])))
        value = draw(values)
        if draw(st.booleans()) and isinstance(doc.get(table), dict):
            doc[table][key] = value
        else:
            doc[table] = value if draw(st.booleans()) else {key: value}
    return doc


@pytest.fixture(scope="module")
def manager():
    return make_manager(warn=False)


FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _builds_or_names(source: Any, overrides: list[str], manager: PluginManager, name: str) -> None:
    try:
        build_pipeline(source, overrides, manager)
    except FlowkitError as exc:
        text = str(exc)
        assert text.startswith(name) or text.startswith("--set"), text
        assert "Traceback" not in text


def _with(table: str, key: str, value: Any) -> dict[str, Any]:
    return {**BASE, table: {**BASE.get(table, {}), key: value}}


@FUZZ
@given(doc=documents())
# sizes too large to allocate and an unwritable directory, always tried first
@example(doc=_with("run", "device", {"kind": "cpu", "threads": 10**12}))
@example(doc=_with("train", "batch_size", 10**12))
@example(doc=_with("evaluate", "floor_repeats", 2**63))
@example(doc=_with("model", "hidden", [10**12]))
@example(doc=_with("model", "hidden", [100_000, 100_000]))
@example(doc=_with("run", "out", "/proc/nope/x"))
def test_any_dict_pipeline_builds_or_raises_a_located_error(manager, doc):
    _builds_or_names(doc, [], manager, "<dict>")


@FUZZ
@given(doc=documents())
def test_any_pipeline_file_builds_or_raises_a_located_error(manager, tmp_path_factory, doc):
    file = tmp_path_factory.mktemp("fuzz") / "pipe.toml"
    try:
        file.write_text(tomli_w.dumps(doc))
    except (RecursionError, ValueError):  # tomli_w cannot write it (too deep for it)
        file.write_text(tomli_w.dumps(BASE) + "[extra]\nx = " + "[{a = " * 3000 + "1" + "}]" * 3000 + "\n")
    _builds_or_names(file, [], manager, str(file))


keys = st.one_of(
    st.sampled_from([f"{t}.{k}" for t, ks in TABLE_KEYS.items() for k in ks]),
    st.sampled_from(["steps", "train", "train.", ".x", "path.schedule.kind", "sample.simulator.rtol"]),
    st.text(max_size=10),
)
override_values = st.one_of(
    st.sampled_from(["5", "-1", "1e400", "nan", "[64,", "[[[", "{kind=", '"', "true", "ot", "[1, [2]]"]),
    st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),
    st.integers(1, 3000).map(lambda d: "{a=" * d + "1" + "}" * d),
    st.text(max_size=20),
)


@FUZZ
@given(sets=st.lists(st.tuples(keys, override_values).map("=".join), min_size=1, max_size=4))
def test_any_set_override_builds_or_raises_a_located_error(manager, tmp_path_factory, sets):
    file = tmp_path_factory.mktemp("fuzz") / "pipe.toml"
    file.write_text(tomli_w.dumps(BASE))
    _builds_or_names(file, sets, manager, str(file))


def test_deep_nesting_is_refused_below_the_recursion_limit(manager, tmp_path):
    depth = sys.getrecursionlimit() * 10
    file = tmp_path / "deep.toml"
    file.write_text(tomli_w.dumps(BASE) + "\n[extra]\nx = " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(FlowkitError, match=r"deep\.toml: invalid pipeline: lists or tables nest too deeply"):
        build_pipeline(file, [], manager)
    ok = tmp_path / "ok.toml"
    ok.write_text(tomli_w.dumps(BASE))
    with pytest.raises(
        FlowkitError, match=r"ok\.toml: --set model\.hidden=\[\[\[.*: the value is nested too deeply"
    ):
        build_pipeline(ok, ["model.hidden=" + "[" * depth + "]" * depth], manager)
    shallow = {
        **BASE,
        "model": {
            "kind": "mlp",
            "hidden": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
        },
    }
    with pytest.raises(
        FlowkitError, match=r"<dict>: \[model\] key 'hidden': lists and tables nest more than 32 levels deep"
    ):
        build_pipeline(shallow, [], manager)
