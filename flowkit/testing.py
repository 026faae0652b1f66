"""Testing aids for plugin authors: an isolated registry with the plugins you choose.

flowkit installs a pytest plugin (:mod:`pytest_flowkit`, the ``pytest11`` entry point ``flowkit``),
so in any project where flowkit is installed these fixtures exist without a ``conftest.py``:

``flowkit_manager``
    A factory, :func:`make_manager`: ``flowkit_manager(plugins=[my_plugin])`` is a
    :class:`~flowkit.registry.PluginManager` with flowkit's built-in plugins and ``my_plugin`` — and
    nothing else that happens to be installed, whatever ``FLOWKIT_DISABLE_PLUGINS`` says.
``flowkit_registry``
    The :class:`~flowkit.registry.ComponentRegistry` of such a manager. Choose its plugins with the
    marker ``@pytest.mark.flowkit_plugins(my_plugin, builtins=True)``.

and this module has the helpers: :func:`make_manager`, :func:`check_component` (does a class
register cleanly, with documented parameters?) and :func:`build_component` (build one from a
TOML-like spec, as a pipeline would)::

    import flowkit_extras
    from flowkit.testing import build_component, check_component

    def test_rk38_registers(flowkit_manager):
        manager = flowkit_manager(plugins=[flowkit_extras])
        assert manager.problems == []
        rk38 = build_component(manager, "simulator", "rk38")

    def test_schedule_is_a_valid_component():
        check_component("schedule", PolynomialSchedule)

Importing this module is cheap (no torch, no plugin) and needs no pytest.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as importlib_metadata
import os
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowkit.interfaces import BuildContext, Component
    from flowkit.registry import ComponentEntry, PluginManager

#: The distribution whose entry points are flowkit's built-in plugins.
BUILTIN_DIST = "flowkit"


def builtin_entry_points(names: Iterable[str] | None = None) -> list[importlib_metadata.EntryPoint]:
    """The ``flowkit`` entry points of flowkit's own distribution (optionally only ``names``)."""
    wanted = None if names is None else set(names)
    found: dict[str, importlib_metadata.EntryPoint] = {}
    for ep in importlib_metadata.entry_points(group="flowkit"):
        dist = getattr(ep, "dist", None)
        if dist is None or dist.metadata["Name"] != BUILTIN_DIST:
            continue
        if wanted is None or ep.name in wanted:
            found.setdefault(ep.name, ep)
    if wanted is not None and wanted - set(found):
        missing = ", ".join(sorted(wanted - set(found)))
        from flowkit.errors import PluginError

        raise PluginError(
            f"no built-in plugin named {missing}; built-in plugins: "
            f"{', '.join(sorted(ep.name for ep in builtin_entry_points()))}"
        )
    return [found[name] for name in sorted(found)]


@contextlib.contextmanager
def _without_disable_env() -> Iterator[None]:
    from flowkit.registry import DISABLE_ENV

    saved = os.environ.pop(DISABLE_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[DISABLE_ENV] = saved


def make_manager(
    plugins: Iterable[Any] = (),
    *,
    builtins: bool | Iterable[str] = True,
    entrypoints: bool = False,
    blocked: Iterable[str] = (),
    warn: bool = True,
) -> PluginManager:
    """A :class:`~flowkit.registry.PluginManager` isolated from the environment.

    Parameters
    ----------
    plugins:
        Your plugin modules or objects, or ``(name, plugin)`` pairs (a module is named by ``__name__``).
    builtins:
        ``True``: all of flowkit's built-in plugins; a list of names (``["gaussian", "simulators"]``):
        only those; ``False``: none.
    entrypoints:
        Load every installed ``flowkit`` entry point instead (built-ins and third-party ones), as the
        CLI does; ``builtins`` is then ignored.
    blocked:
        Plugin names to block, as ``-p no:NAME``. ``FLOWKIT_DISABLE_PLUGINS`` is ignored.
    warn:
        Emit a :class:`~flowkit.registry.FlowkitPluginWarning` for every problem (they are always
        in ``manager.problems``).
    """
    from flowkit.registry import PluginManager

    chosen: list[Any] = []
    origin: dict[str, importlib_metadata.EntryPoint] = {}
    if not entrypoints and builtins is not False:
        for ep in builtin_entry_points(None if builtins is True else builtins):
            chosen.append((ep.name, ep.load()))
            origin[ep.name] = ep
    chosen.extend(plugins)
    with _without_disable_env():
        manager = PluginManager(entrypoints=entrypoints, plugins=chosen, blocked=blocked, warn=warn)
    # The built-ins were passed as objects; record where they really come from.
    for name, ep in origin.items():
        info = manager.plugins.get(name)
        if info is not None and ep.dist is not None:
            info.dist, info.version, info.module = ep.dist.metadata["Name"], ep.dist.version, ep.value
    return manager


def component_problems(kind: str, cls: type[Any]) -> list[str]:
    """Everything wrong with ``cls`` as a ``kind`` component (empty when it is fine).

    Checks what the registry checks (interface, abstract methods, attrs ``Params``) and what the
    docs and the config loader need: every parameter has a one-line doc and a type the loader
    understands, and ``Params()`` builds when no parameter is required.
    """
    import attrs

    from flowkit.config import _type_hints
    from flowkit.errors import RegistryError
    from flowkit.params import field_doc
    from flowkit.registry import ComponentRegistry

    try:
        ComponentRegistry().add(kind, "under-test", cls)
    except RegistryError as exc:
        return [str(exc)]
    problems = []
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not (cls.__doc__ or "").strip():
        problems.append(f"{name} has no docstring (its first line is its one-line description)")
    hints = _type_hints(cls.Params)
    for field in attrs.fields(cls.Params):
        doc = field_doc(field)
        if not doc:
            problems.append(f"{name}.Params.{field.name} has no doc: declare it with flowkit.params.param")
        elif "\n" in doc:
            problems.append(f"{name}.Params.{field.name}: the doc should be one line")
        if not _plain_type(hints.get(field.name, typing.Any)):
            problems.append(
                f"{name}.Params.{field.name} has type {field.type!r}; use int, float, bool, str, "
                "list[...], typing.Literal[...] or a component interface"
            )
    if all(f.default is not attrs.NOTHING for f in attrs.fields(cls.Params)):
        try:
            cls.Params()
        except Exception as exc:
            problems.append(f"{name}.Params() fails with its defaults: {type(exc).__name__}: {exc}")
    return problems


def _plain_type(tp: Any) -> bool:
    import attrs

    from flowkit.interfaces import kind_of

    if tp in (int, float, bool, str) or (isinstance(tp, type) and kind_of(tp) is not None):
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return True
    if origin in (list, tuple, typing.Union, types.UnionType):
        return all(_plain_type(a) for a in args if a is not type(None) and a is not Ellipsis)
    if origin is dict:
        return len(args) == 2 and args[0] is str and _plain_type(args[1])
    return isinstance(tp, type) and attrs.has(tp)


def check_component(kind: str, cls: type[Any]) -> ComponentEntry:
    """Assert that ``cls`` registers cleanly as a ``kind`` and documents its parameters.

    Returns the registry entry; raises ``AssertionError`` listing every problem.
    """
    from flowkit.registry import ComponentRegistry

    problems = component_problems(kind, cls)
    if problems:
        raise AssertionError(
            f"{cls.__qualname__} is not a valid {kind} component:\n  - " + "\n  - ".join(problems)
        )
    registry = ComponentRegistry()
    registry.add(kind, "under-test", cls)
    return registry.get(kind, "under-test")


def build_component(
    manager: PluginManager,
    kind: str,
    spec: str | Mapping[str, Any],
    context: BuildContext | None = None,
) -> Component:
    """Build a component as a pipeline would: ``spec`` is a name or a table with ``kind``.

    ``build_component(manager, "schedule", {"kind": "polynomial", "power": 3.0})``. Errors are the
    :class:`~flowkit.errors.ConfigError` a pipeline file would give (the source is ``<test>``).
    ``context`` provides what components built before it would (data, path, model roles).
    """
    from flowkit.config import Location, Structurer
    from flowkit.interfaces import BuildContext

    context = context if context is not None else BuildContext(source="<test>")
    table = dict(spec) if isinstance(spec, Mapping) else spec
    return Structurer(manager.registry, context).build(kind, table, Location(context.source, (kind,)))
