"""Component documentation generated from the registry: ``flowkit describe`` and ``docs/reference.md``.

Every parameter's name, type, default and one-line doc come from the component's attrs ``Params``
class (:mod:`flowkit.params`), so the reference cannot drift from the code: ``python -m flowkit.docs``
rewrites ``docs/reference.md`` and ``python -m flowkit.docs --check`` fails when it is out of date.

The reference covers the built-in plugins only (those shipped by the ``flowkit`` distribution), so it
is the same whatever third-party plugins are installed.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from flowkit.params import COMPONENT, field_doc

if TYPE_CHECKING:
    from flowkit.registry import ComponentEntry, ComponentRegistry, PluginManager

#: Distribution whose plugins the generated reference documents.
BUILTIN_DIST = "flowkit"
#: Where ``python -m flowkit.docs`` writes the reference, relative to the repository root.
REFERENCE = Path("docs") / "reference.md"


@attrs.frozen
class ParamRow:
    """One parameter of a component or section, as documented."""

    name: str
    type: str
    default: str
    doc: str
    required: bool = False


# ---------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------


def param_rows(params_cls: type) -> list[ParamRow]:
    """The documented parameters of an attrs ``Params`` class, in declaration order."""
    from flowkit.config import _type_hints

    hints = _type_hints(params_cls)
    rows = []
    for field in attrs.fields(params_cls):
        tp = hints.get(field.name, Any)
        default = field.default
        required = default is attrs.NOTHING
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else attrs.NOTHING
        rows.append(
            ParamRow(
                name=field.name,
                type=type_name(tp, component=bool(field.metadata.get(COMPONENT))),
                default="(required)" if required else toml_value(default),
                doc=field_doc(field),
                required=required,
            )
        )
    return rows


def type_name(tp: Any, component: bool = False) -> str:
    """A short, TOML-minded type name: ``float``, ``list[int]``, ``"a" | "b"``, ``schedule`` (a kind)."""
    from flowkit.interfaces import kind_of

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and kind_of(tp) is not None:
        return kind_of(tp)  # type: ignore[return-value]
    if origin is typing.Literal:
        return " | ".join(toml_value(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        options = [type_name(a, component) for a in args if a is not type(None)]
        return " | ".join(options)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return f"list[{type_name(args[0]) if args else 'any'}]"
    if origin in (dict, Mapping) or tp is dict:
        return f"table of {type_name(args[1]) if len(args) == 2 else 'any'}"
    if tp is Any:
        return "component" if component else "any"
    if attrs.has(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def toml_value(value: Any) -> str:
    """``value`` as TOML (``"ot"``, ``true``, ``[64, 64]``, ``{ kind = "vp" }``); ``None`` is ``(none)``."""
    from flowkit.interfaces import Component

    if value is None or value is attrs.NOTHING:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Component):
        return toml_value(value.display_name)
    return repr(value)


def plain(text: str) -> str:
    """Docstring text without Sphinx roles: ``:class:`ODE``` becomes ```ODE```."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, joined into one line."""
    doc = plain(inspect.getdoc(obj) or "")
    return " ".join(doc.split("\n\n", 1)[0].split())


def section_summary(table: str, cls: type) -> str:
    """A section class's first paragraph without its leading ``[table]``: label."""
    text = first_paragraph(cls)
    label = f"``[{table}]``:"
    return text[len(label) :].strip() if text.startswith(label) else text


def abstract_methods(interface: type) -> list[str]:
    """Methods and properties a class of this kind must implement."""
    return sorted(getattr(interface, "__abstractmethods__", ()))


# ---------------------------------------------------------------------------------------------------
# Where components go in a pipeline file
# ---------------------------------------------------------------------------------------------------


def sections(registry: ComponentRegistry | None = None) -> dict[str, type]:
    """The tables that are not components and their attrs classes: flowkit's own (``run``, ``train``,
    ...) and, given a registry, those its plugins declared (``report``, ...)."""
    from flowkit.engine.sections import TABLES

    found = {table: spec for table, spec in TABLES.items() if isinstance(spec, type) and table != "flowkit"}
    if registry is not None:
        found.update({entry.name: entry.cls for entry in registry.tables()})
    return found


def subtables(label: str, cls: type) -> list[tuple[str, type]]:
    """The tables nested in a section (a field typed with an attrs class that is no component), depth
    first: ``[("[evaluate] likelihood", LikelihoodSection), ("[evaluate] likelihood.dequantize", ...)]``."""
    from flowkit.config import _type_hints
    from flowkit.interfaces import kind_of

    found: list[tuple[str, type]] = []
    hints = _type_hints(cls)
    for field in attrs.fields(cls):
        tp = hints.get(field.name)
        for option in [a for a in typing.get_args(tp) if a is not type(None)] or [tp]:
            if isinstance(option, type) and attrs.has(option) and kind_of(option) is None:
                name = f"{label}.{field.name}" if " " in label else f"{label} {field.name}"
                found += [(name, option), *subtables(name, option)]
    return found


def table_owner(registry: ComponentRegistry | None, table: str) -> str:
    """``" (declared by plugin 'report' (flowkit 0.1.0))"`` for a plugin's table, else ``""``."""
    for entry in registry.tables() if registry is not None else ():
        if entry.name == table:
            return f" (declared by {entry.plugin.describe()})"
    return ""


def placements(registry: ComponentRegistry) -> dict[str, list[str]]:
    """For every kind, the places a pipeline file names one: ``[data]``, ``[sample] simulator``, ..."""
    from flowkit.config import _type_hints
    from flowkit.engine.sections import TABLES
    from flowkit.interfaces import kind_of

    where: dict[str, list[str]] = {kind: [] for kind in registry.kinds()}
    for table, spec in TABLES.items():
        if isinstance(spec, str):
            where.setdefault(spec, []).append(f"[{table}]")
    holders: list[tuple[str, type]] = [(f"[{t}]", cls) for t, cls in sections(registry).items()]
    holders += [nested for t, cls in sections(registry).items() for nested in subtables(f"[{t}]", cls)]
    holders += [(f"{e.kind} '{e.name}'", e.cls.Params) for e in registry.entries()]
    for holder, params_cls in holders:
        hints = _type_hints(params_cls)
        for field in attrs.fields(params_cls):
            tp = hints.get(field.name)
            inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            for option in inner:
                kind = kind_of(option) if isinstance(option, type) else None
                if kind is not None:
                    where.setdefault(kind, []).append(f"{holder} {field.name}")
                    break
    return where


# ---------------------------------------------------------------------------------------------------
# flowkit describe
# ---------------------------------------------------------------------------------------------------


def _table(rows: list[ParamRow], indent: str = "  ") -> list[str]:
    if not rows:
        return [f"{indent}(no parameters)"]
    head = ParamRow("parameter", "type", "default", "description")
    columns = ("name", "type", "default")
    widths = [max(len(getattr(r, col)) for r in [head, *rows]) for col in columns]
    lines = []
    for row in [head, *rows]:
        cells = [getattr(row, col).ljust(w) for col, w in zip(columns, widths, strict=True)]
        lines.append((indent + "  ".join([*cells, row.doc])).rstrip())
    return lines


def example_toml(kind: str, name: str, rows: list[ParamRow], where: Sequence[str]) -> list[str]:
    """A snippet using the component with its defaults: a table where it has one, else inline."""
    shown = [r for r in rows if r.default not in ("(none)", "[]", "{}") and not r.required]
    values = [(r.name, r.default) for r in shown]
    values += [(r.name, f"<{r.type}>") for r in rows if r.required]
    top = next((w for w in where if w.startswith("[") and " " not in w), None)
    if top is not None:
        return [top, f'kind = "{name}"', *(f"{k} = {v}" for k, v in values)]
    inline = ", ".join([f'kind = "{name}"', *(f"{k} = {v}" for k, v in values)])
    target = where[0] if where else f"{kind} ="
    table, _, key = target.rpartition(" ") if target.startswith("[") else ("", "", kind)
    return ([table] if table else []) + [f"{key} = {{ {inline} }}"]


def describe_component(manager: PluginManager, kind: str, name: str) -> str:
    """What ``flowkit describe KIND NAME`` prints: origin, docstring, parameters, an example."""
    registry = manager.registry
    entry = registry.get(kind, name)
    cls = entry.cls
    plugin = entry.plugin
    origin = f"plugin '{plugin.name}'" if plugin.name else "registered directly"
    if plugin.dist:
        origin += f", {plugin.dist} {plugin.version}".rstrip()
    lines = [f"{kind} '{name}'  ({origin}; {cls.__module__}.{cls.__qualname__})", ""]
    doc = plain(inspect.getdoc(cls) or "(no docstring)")
    lines += ["  " + line if line else "" for line in doc.splitlines()]
    rows = param_rows(cls.Params)
    lines += ["", "Parameters:", *_table(rows), "", "Example:"]
    lines += ["  " + line for line in example_toml(kind, name, rows, placements(registry).get(kind, []))]
    return "\n".join(lines) + "\n"


def describe_kind(manager: PluginManager, kind: str) -> str:
    """What ``flowkit describe KIND`` prints: the interface and every registered component."""
    registry = manager.registry
    interface = registry.interface(kind)
    lines = [f"{kind}: {first_paragraph(interface)}"]
    where = placements(registry).get(kind, [])
    if where:
        lines.append(f"Used in: {', '.join(where)}")
    lines.append(f"Interface: {interface.__module__}.{interface.__qualname__}")
    lines.append("")
    entries = registry.entries(kind)
    width = max((len(e.name) for e in entries), default=0)
    for entry in entries:
        summary = plain(entry.doc)
        lines.append(f"  {entry.name.ljust(width)}  {summary}  [{entry.plugin.name or '-'}]".rstrip())
    if not entries:
        lines.append("  (none registered: is a plugin blocked or broken? see `flowkit plugins`)")
    lines += ["", f"`flowkit describe {kind} NAME` shows a component's parameters."]
    return "\n".join(lines) + "\n"


def describe_section(table: str, registry: ComponentRegistry | None = None) -> str:
    """What ``flowkit describe TABLE`` prints for a pipeline section (``run``, ``train``, ``report``, ...)."""
    cls = sections(registry)[table]
    summary = section_summary(table, cls) + table_owner(registry, table)
    lines = [f"[{table}]: {summary}", "", "Keys:", *_table(param_rows(cls))]
    for label, nested in subtables(f"[{table}]", cls):
        lines += ["", f"{label}: {first_paragraph(nested).split(':', 1)[-1].strip()}", "", "Keys:"]
        lines += _table(param_rows(nested))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# docs/reference.md
# ---------------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_rows(rows: Iterable[ParamRow]) -> list[str]:
    rows = list(rows)
    if not rows:
        return ["No parameters."]
    out = ["| key | type | default | description |", "|---|---|---|---|"]
    for row in rows:
        out.append(
            f"| `{row.name}` | {_cell(row.type)} | `{_cell(row.default)}` | {_cell(row.doc)} |".replace(
                "`(required)`", "**required**"
            )
        )
    return out


def builtin_manager() -> PluginManager:
    """A plugin manager holding only the plugins shipped by the ``flowkit`` distribution."""
    from flowkit.testing import make_manager

    return make_manager(builtins=True, warn=False)


def generate_reference(manager: PluginManager | None = None) -> str:
    """The Markdown pipeline reference: every section, every kind, every built-in component."""
    manager = manager or builtin_manager()
    registry = manager.registry
    where = placements(registry)
    out = [
        "# Pipeline reference",
        "",
        "<!-- Generated by `python -m flowkit.docs` from the registry; do not edit by hand. -->",
        "",
        "Every table of a pipeline file, every kind of component, and every component of the built-in "
        "plugins with each parameter's type, default and meaning. A component is named by `kind` in "
        'its table (`[path] kind = "gaussian"`) or inline (`schedule = { kind = "vp" }`, or just '
        '`schedule = "vp"` for the defaults). `flowkit describe KIND NAME` prints the same for any '
        "installed component, third-party ones included.",
        "",
        "## Contents",
        "",
        "- [Pipeline sections](#pipeline-sections): " + ", ".join(f"`[{t}]`" for t in sections(registry)),
        "- [Kinds of component](#kinds-of-component): "
        + ", ".join(f"[{k}](#kind-{k})" for k in registry.kinds()),
        "",
        "## Pipeline sections",
        "",
        "Tables that are not components. `[data]`, `[path]`, `[model]` and `[loss]` name a component "
        "(see the kinds below).",
        "",
    ]
    for table, cls in sections(registry).items():
        summary = section_summary(table, cls) + table_owner(registry, table)
        out += [f"### `[{table}]`", "", summary[:1].upper() + summary[1:], ""]
        out += [*_markdown_rows(param_rows(cls)), ""]
        for label, nested in subtables(f"[{table}]", cls):
            text = first_paragraph(nested).split(":", 1)[-1].strip()
            out += [f"#### `{label}`", "", text[:1].upper() + text[1:], ""]
            out += [*_markdown_rows(param_rows(nested)), ""]
    out += ["## Kinds of component", ""]
    for kind in registry.kinds():
        interface = registry.interface(kind)
        out += [f'<a id="kind-{kind}"></a>', "", f"### {kind}", ""]
        out.append(first_paragraph(interface))
        out.append("")
        out.append(f"- Interface: `{interface.__module__}.{interface.__qualname__}`")
        methods = abstract_methods(interface)
        if methods:
            out.append(f"- To implement: {', '.join(f'`{m}`' for m in methods)}")
        if where.get(kind):
            out.append(f"- Used in: {', '.join(f'`{w}`' for w in where[kind])}")
        entries = registry.entries(kind)
        out.append(f"- Built-in: {', '.join(f'`{e.name}`' for e in entries) or '(none)'}")
        out.append("")
        for entry in entries:
            out += _entry_section(entry)
    return "\n".join(out).rstrip() + "\n"


def _entry_section(entry: ComponentEntry) -> list[str]:
    cls = entry.cls
    return [
        f"#### {entry.kind} `{entry.name}`",
        "",
        f"{first_paragraph(cls)}",
        "",
        f"Plugin `{entry.plugin.name}`, class `{cls.__module__}.{cls.__qualname__}`.",
        "",
        *_markdown_rows(param_rows(cls.Params)),
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowkit.docs [--check] [--out FILE]``: write (or check) the pipeline reference."""
    parser = argparse.ArgumentParser(prog="python -m flowkit.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REFERENCE), help="reference file (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = generate_reference()
    target = Path(args.out)
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            print(f"{target} is out of date: run `python -m flowkit.docs`", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
