"""The plugin manager and the component registry.

:class:`PluginManager` wraps a pluggy manager for the project ``flowkit``: it loads the ``flowkit``
entry-point group (the built-in plugins are listed there too; the core has no list of them), calls
each plugin's :func:`~flowkit.hookspecs.flowkit_register` with a :class:`ComponentRegistry`, and keeps
a record of every plugin, its distribution and what it provides.

A broken plugin never takes the rest down: a plugin that fails to import, registers a duplicate name
or an invalid class, or implements a hook that does not exist is recorded as a :class:`PluginProblem`
(and warned about with :class:`FlowkitPluginWarning`); everything else keeps working.
"""

from __future__ import annotations

import importlib
import importlib.metadata as importlib_metadata
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import attrs
import pluggy

from flowkit import hookspecs
from flowkit.errors import PluginError, RegistryError, suggest
from flowkit.interfaces import KINDS, Component
from flowkit.plugin_records import ComponentEntry as ComponentEntry
from flowkit.plugin_records import FlowkitPluginWarning as FlowkitPluginWarning
from flowkit.plugin_records import PluginInfo as PluginInfo
from flowkit.plugin_records import PluginProblem as PluginProblem
from flowkit.plugin_records import TableEntry as TableEntry

#: Environment variable with comma-separated plugin names to block (like ``-p no:NAME``).
DISABLE_ENV = "FLOWKIT_DISABLE_PLUGINS"
#: flowkit's own stages, ordinary ``trylast`` implementations of the stage hooks (as pytest's
#: ``essential_plugins``): registered in every manager, never blocked, listed as flowkit's own. Named by
#: module and imported when a manager is made, as the engine sits above the registry.
STAGES = {
    "flowkit-train": "flowkit.engine.train",
    "flowkit-sample": "flowkit.engine.sample",
    "flowkit-evaluate": "flowkit.engine.evaluate",
}
#: Plugins that cannot be blocked: the core's own hook specifications live under ``flowkit``.
PROTECTED = frozenset({"flowkit", *STAGES})


class ComponentRegistry:
    """Component tables per kind. Plugins receive it in ``flowkit_register`` and call :meth:`add`.

    ``add`` checks that the class derives from its kind's interface and implements every abstract
    method, and that the name is free; a violation raises :class:`RegistryError` (during plugin
    loading it is recorded as a problem of that plugin instead, and loading goes on).
    """

    def __init__(self) -> None:
        self._interfaces: dict[str, type] = dict(KINDS)
        self._tables: dict[str, dict[str, ComponentEntry]] = {kind: {} for kind in self._interfaces}
        self._config_tables: dict[str, TableEntry] = {}
        #: Plugins blocked in this session (named when a component is not found: one may provide it).
        self.blocked: frozenset[str] = frozenset()
        self._plugin: PluginInfo = PluginInfo("", "")
        self._collect: list[PluginProblem] | None = None

    # --- registration --------------------------------------------------------------------------------

    def add_kind(self, kind: str, interface: type) -> None:
        """Add a new kind of component whose classes must derive from ``interface``."""
        if kind in self._interfaces and self._interfaces[kind] is not interface:
            self._fail(
                f"{self._plugin.describe()} adds kind '{kind}', which already exists "
                f"with interface {_qualname(self._interfaces[kind])}"
            )
            return
        self._interfaces[kind] = interface
        self._tables.setdefault(kind, {})

    def add(self, kind: str, name: str, cls: type) -> None:
        """Register ``cls`` as the ``kind`` component called ``name``."""
        plugin = self._plugin
        if kind not in self._interfaces:
            self._fail(
                f"{plugin.describe()} registers {name!r} under unknown kind '{kind}'."
                f"{suggest(kind, self._interfaces)} Known kinds: {', '.join(self._interfaces)}"
            )
            return
        if not isinstance(name, str) or not name:
            self._fail(
                f"{plugin.describe()} registers a {kind} with an invalid name {name!r}; "
                "names are non-empty strings"
            )
            return
        interface = self._interfaces[kind]
        if not (isinstance(cls, type) and issubclass(cls, interface)):
            self._fail(
                f"{plugin.describe()} registers {kind} '{name}' as {_qualname(cls)}, which does not "
                f"derive from {_qualname(interface)}; subclass it and implement its methods"
            )
            return
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        if missing:
            self._fail(
                f"{plugin.describe()} registers {kind} '{name}' as {_qualname(cls)}, which does not "
                f"implement {_qualname(interface)}: missing {', '.join(missing)}"
            )
            return
        params = getattr(cls, "Params", None)
        if not (isinstance(params, type) and attrs.has(params)):
            self._fail(
                f"{plugin.describe()} registers {kind} '{name}' as {_qualname(cls)}, whose Params "
                "is not an attrs class; declare it with @attrs.define(frozen=True)"
            )
            return
        table = self._tables[kind]
        if name in table:
            first = table[name]
            self._fail(
                f"duplicate {kind} '{name}': registered by {first.plugin.describe()} as "
                f"{_qualname(first.cls)} and again by {plugin.describe()} as {_qualname(cls)}; "
                f"the first is kept. Rename one, or block one with -p no:NAME"
            )
            return
        table[name] = ComponentEntry(kind, name, cast("type[Component]", cls), plugin)

    def add_table(self, name: str, params: type) -> None:
        """Declare the pipeline table ``[name]``, validated against the attrs class ``params`` (its
        fields documented with :func:`flowkit.params.param`, as a component's ``Params``)."""
        plugin = self._plugin
        if not isinstance(name, str) or not name.isidentifier():
            self._fail(
                f"{plugin.describe()} declares a table with an invalid name {name!r}; use a TOML bare key"
            )
            return
        if not (isinstance(params, type) and attrs.has(params)):
            self._fail(
                f"{plugin.describe()} declares table [{name}] with {_qualname(params)}, which is not an "
                "attrs class; declare it with @attrs.define(frozen=True)"
            )
            return
        if name in self._config_tables:
            first = self._config_tables[name]
            self._fail(
                f"duplicate table [{name}]: declared by {first.plugin.describe()} and again by "
                f"{plugin.describe()}; the first is kept. Rename one, or block one with -p no:NAME"
            )
            return
        self._config_tables[name] = TableEntry(name, params, plugin)

    def _drop(self, plugin: str) -> None:
        """Remove what ``plugin`` registered (it broke while registering)."""
        for table in self._tables.values():
            for name in [n for n, e in table.items() if e.plugin.name == plugin]:
                del table[name]
        for name in [n for n, e in self._config_tables.items() if e.plugin.name == plugin]:
            del self._config_tables[name]

    def _fail(self, message: str) -> None:
        if self._collect is None:
            raise RegistryError(message)
        self._collect.append(PluginProblem(self._plugin, message))

    # --- lookup --------------------------------------------------------------------------------------

    def kinds(self) -> list[str]:
        """Every kind, in pipeline order."""
        return list(self._interfaces)

    def interface(self, kind: str) -> type:
        """The interface classes of ``kind`` derive from."""
        self._check_kind(kind)
        return self._interfaces[kind]

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        self._check_kind(kind)
        return sorted(self._tables[kind])

    def get(self, kind: str, name: str) -> ComponentEntry:
        """The entry for ``kind`` ``name``; an unknown name lists the known ones and the nearest."""
        self._check_kind(kind)
        table = self._tables[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "(none: is a plugin blocked or broken? see `flowkit plugins`)"
            blocked = self.blocked_hint("provide")
            raise RegistryError(
                f"unknown {kind} '{name}'.{suggest(name, table)} Known {_plural(kind)}: {known}{blocked}"
            )
        return table[name]

    def entries(self, kind: str | None = None) -> list[ComponentEntry]:
        """All entries (of one kind), in kind order then name order."""
        kinds = [kind] if kind is not None else self.kinds()
        return [self._tables[k][n] for k in kinds for n in sorted(self._tables[k])]

    def blocked_hint(self, verb: str) -> str:
        """``". Blocked plugins, which may VERB it: 'a', 'b' (by -p no:NAME or ...)"``, or ``""`` when
        no plugin is blocked: what a "not found" message adds."""
        if not self.blocked:
            return ""
        names = ", ".join(f"'{b}'" for b in sorted(self.blocked))
        return f". Blocked plugins, which may {verb} it: {names} (by -p no:NAME or {DISABLE_ENV})"

    def tables(self) -> list[TableEntry]:
        """The tables plugins declared, in the order they were declared."""
        return list(self._config_tables.values())

    def _check_kind(self, kind: str) -> None:
        if kind not in self._interfaces:
            raise RegistryError(
                f"unknown kind '{kind}'.{suggest(kind, self._interfaces)} "
                f"Known kinds: {', '.join(self._interfaces)}"
            )

    # --- used by PluginManager -----------------------------------------------------------------------

    def _registering(self, plugin: PluginInfo, problems: list[PluginProblem] | None) -> _Scope:
        return _Scope(self, plugin, problems)


class _Scope:
    """Context in which ``add`` attributes entries to one plugin and records its problems."""

    def __init__(
        self, registry: ComponentRegistry, plugin: PluginInfo, problems: list[PluginProblem] | None
    ) -> None:
        self.registry, self.plugin, self.problems = registry, plugin, problems

    def __enter__(self) -> ComponentRegistry:
        self.saved = (self.registry._plugin, self.registry._collect)
        self.registry._plugin, self.registry._collect = self.plugin, self.problems
        return self.registry

    def __exit__(self, *exc: object) -> None:
        self.registry._plugin, self.registry._collect = self.saved


class PluginManager:
    """Loads plugins and builds the component registry.

    Parameters
    ----------
    entrypoints:
        Load the ``flowkit`` entry-point group (the built-ins and installed third-party plugins).
    plugins:
        Extra plugin objects or modules to register, as ``(name, plugin)`` pairs or bare modules
        (named by ``__name__``); used by tests and by the :mod:`flowkit.testing` fixture.
    blocked:
        Plugin names to block (``-p no:NAME``); ``FLOWKIT_DISABLE_PLUGINS`` adds more.
    warn:
        Emit a :class:`FlowkitPluginWarning` for every problem (they are always kept in ``problems``).
    """

    def __init__(
        self,
        *,
        entrypoints: bool = True,
        plugins: Iterable[Any] = (),
        blocked: Iterable[str] = (),
        warn: bool = True,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = ComponentRegistry()
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[PluginProblem] = []
        self.blocked = _blocked_names(blocked)
        self.registry.blocked = self.blocked
        self._warn = warn
        for name, module in STAGES.items():
            self.pm.register(importlib.import_module(module), name=name)
        candidates: list[tuple[PluginInfo, Any]] = []
        if entrypoints:
            candidates.extend(self._entry_point_plugins())
        for item in plugins:
            name, obj = item if isinstance(item, tuple) else (getattr(item, "__name__", repr(item)), item)
            candidates.append(
                (PluginInfo(name, "(registered directly)", "", getattr(obj, "__name__", "")), obj)
            )
        known = {info.name for info, _ in candidates}
        for name in sorted(self.blocked - known):
            self._problem(
                PluginInfo(name),
                f"cannot block plugin '{name}': no plugin of that name."
                f"{suggest(name, known)} Known plugins: {', '.join(sorted(known))}",
            )
        for info, obj in candidates:
            if info.name in self.blocked:
                self.pm.set_blocked(info.name)
                continue
            self._register(info, obj)
        self._check_hooks()
        for info, obj in candidates:
            if info.name not in self.blocked and self.pm.is_registered(obj):
                self._call_register(info, obj)
        self.hook = self.pm.hook

    # --- loading -------------------------------------------------------------------------------------

    def _entry_point_plugins(self) -> Iterator[tuple[PluginInfo, Any]]:
        seen: set[tuple[str, str]] = set()

        # flowkit's own plugins first, then the others by distribution: the order in which names are
        # claimed (and so which of two duplicates is kept) never depends on sys.path order.
        def order(ep: Any) -> tuple[bool, str, str]:
            dist = ep.dist.metadata["Name"] if getattr(ep, "dist", None) else ""
            return (dist != hookspecs.PROJECT, dist, ep.name)

        for ep in sorted(importlib_metadata.entry_points(group=hookspecs.PROJECT), key=order):
            if (ep.name, ep.value) in seen:  # editable installs can list an entry point twice
                continue
            seen.add((ep.name, ep.value))
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                ep.name,
                dist.metadata["Name"] if dist else "(unknown)",
                dist.version if dist else "",
                ep.value,
            )
            if ep.name in self.blocked:
                yield info, None
                continue
            try:
                obj = ep.load()
            except BaseException as exc:  # a broken plugin must not take the others down
                _interrupt(exc)
                self._problem(info, f"{info.describe()} failed to import {ep.value!r}: {_raised(exc)}")
                continue
            yield info, obj

    def _register(self, info: PluginInfo, obj: Any) -> None:
        if info.name in PROTECTED:
            self._problem(info, f"{info.describe()} uses the reserved name '{info.name}'; rename it")
            return
        if info.name in self.plugins:
            first = self.plugins[info.name]
            self._problem(
                info,
                f"two plugins are named '{info.name}': {first.describe()} and "
                f"{info.describe()}; the first is kept",
            )
            return
        try:
            self.pm.register(obj, name=info.name)
        except BaseException as exc:  # pluggy validates hook signatures here
            _interrupt(exc)
            self._problem(info, f"{info.describe()} could not be registered: {exc}")
            return
        self.plugins[info.name] = info

    def _check_hooks(self) -> None:
        """Like ``pm.check_pending()``, but a misspelled hook disables only its own plugin."""
        specs = {name for name in dir(hookspecs) if name.startswith("flowkit_")}
        for name in list(self.plugins):
            obj = self.pm.get_plugin(name)
            for caller in self.pm.get_hookcallers(obj) or []:
                if caller.spec is None and not _optional(caller, obj):
                    info = self.plugins.pop(name)
                    self.pm.unregister(obj)
                    self._problem(
                        info,
                        f"{info.describe()} implements unknown hook '{caller.name}'."
                        f"{suggest(caller.name, specs)} The plugin was not loaded",
                    )
                    break

    def _call_register(self, info: PluginInfo, obj: Any) -> None:
        impls = [i for i in self.pm.hook.flowkit_register.get_hookimpls() if i.plugin is obj]
        problems: list[PluginProblem] = []
        with self.registry._registering(info, problems) as registry:
            for impl in impls:
                try:
                    impl.function(registry=registry)
                except BaseException as exc:  # blocked: half its components and its hooks would run
                    _interrupt(exc)
                    message = f"{info.describe()} raised in flowkit_register: {_raised(exc)}; it was blocked"
                    problems.append(PluginProblem(info, message))
                    self.registry._drop(info.name)
                    self.pm.unregister(obj)
                    self.plugins.pop(info.name, None)
                    break
        for problem in problems:
            self._problem(problem.plugin, problem.message)

    def _problem(self, info: PluginInfo, message: str) -> None:
        self.problems.append(PluginProblem(info, message))
        if self._warn:
            warnings.warn(message, FlowkitPluginWarning, stacklevel=3)

    # --- queries -------------------------------------------------------------------------------------

    def components_of(self, plugin: str) -> list[ComponentEntry]:
        """What ``plugin`` registered."""
        return [e for e in self.registry.entries() if e.plugin.name == plugin]

    def core_stages(self) -> dict[str, str]:
        """flowkit's own stage plugins (``{name: module}``): always registered, never blocked."""
        return dict(STAGES)

    def describe_plugins(self) -> list[dict[str, Any]]:
        """Every loaded plugin with its distribution, version and components (for ``flowkit plugins``)."""
        rows = []
        for info in sorted(self.plugins.values(), key=lambda i: i.name):
            rows.append(
                {
                    "name": info.name,
                    "distribution": info.dist,
                    "version": info.version,
                    "module": info.module,
                    "components": [{"kind": e.kind, "name": e.name} for e in self.components_of(info.name)],
                }
            )
        return rows


def _optional(caller: pluggy.HookCaller, obj: Any) -> bool:
    return all(impl.optionalhook for impl in caller.get_hookimpls() if impl.plugin is obj)


def _blocked_names(blocked: Iterable[str]) -> frozenset[str]:
    names = {b.strip() for b in blocked if b.strip()}
    names |= {b.strip() for b in os.environ.get(DISABLE_ENV, "").split(",") if b.strip()}
    protected = names & PROTECTED
    if protected:
        name = sorted(protected)[0]
        if name in STAGES:
            raise PluginError(
                f"plugin '{name}' is flowkit's own stage ({STAGES[name]}) and cannot be disabled; a "
                "plugin replaces the stage by returning a result from its hook first"
            )
        raise PluginError(f"plugin '{name}' is flowkit's core and cannot be disabled")
    return frozenset(names)


def parse_block_options(options: Sequence[str]) -> list[str]:
    """Turn ``-p no:NAME`` values into plugin names; anything else is an error."""
    names = []
    for option in options:
        if not option.startswith("no:") or not option[3:]:
            raise PluginError(f"-p {option}: expected 'no:NAME' to block the plugin NAME")
        names.append(option[3:])
    return names


def _interrupt(exc: BaseException) -> None:
    """Re-raise Ctrl-C; anything else a plugin raises while loading (``SystemExit`` included: its
    ``sys.exit`` must not end every command without a word) is reported as its problem."""
    if isinstance(exc, KeyboardInterrupt):
        raise exc


def _raised(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _qualname(obj: Any) -> str:
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    return repr(obj)


def _plural(kind: str) -> str:
    """``loss`` -> ``losses``, ``path`` -> ``paths``: how a message lists the registered ones."""
    return kind + ("es" if kind.endswith(("s", "x", "sh", "ch")) else "s")
