"""The records the plugin manager keeps (:mod:`flowkit.registry`): a plugin, a problem it has, a
component or a pipeline table it registered."""

from __future__ import annotations

import inspect

import attrs

from flowkit.interfaces import Component


class FlowkitPluginWarning(UserWarning):
    """A plugin could not be loaded or registered something invalid; the rest keeps working."""


@attrs.define
class PluginInfo:
    """One loaded (or failed) plugin: its entry-point name and the distribution that ships it."""

    name: str
    dist: str = "(not installed)"
    version: str = ""
    module: str = ""

    def describe(self) -> str:
        """``"plugin 'name' (dist version)"`` for messages."""
        if not self.name:
            return "a direct registry.add call"
        return f"plugin '{self.name}' ({self.dist} {self.version})".replace(" )", ")")


@attrs.define
class PluginProblem:
    """Something a plugin got wrong, with the cause."""

    plugin: PluginInfo
    message: str


@attrs.define
class ComponentEntry:
    """A registered component: its kind, name, class and the plugin that registered it."""

    kind: str
    name: str
    cls: type[Component]
    plugin: PluginInfo

    @property
    def doc(self) -> str:
        """First line of the class docstring."""
        return (inspect.getdoc(self.cls) or "").split("\n", 1)[0]


@attrs.define
class TableEntry:
    """A pipeline table a plugin declared: ``[name]``, validated against the attrs class ``cls``."""

    name: str
    cls: type
    plugin: PluginInfo
