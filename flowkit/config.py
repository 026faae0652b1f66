"""TOML pipeline files → validated attrs objects, and back.

Loading has three steps: read the file (TOML syntax errors keep their line and column), apply
``--set table.key=value`` overrides, then structure every table against its attrs class. A table with
a ``kind`` is a component: the registry gives its class, the remaining keys are its ``Params``, and the
component is built with the :class:`~flowkit.interfaces.BuildContext` of what was built before it.

Every error is a :class:`~flowkit.errors.ConfigError` naming the file, the table and key path, what
was found and what was expected, and the nearest valid name where one was misspelled.
"""

from __future__ import annotations

import math
import sys
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from flowkit.config_numbers import digits_error, largest_size
from flowkit.config_text import describe_type, describe_value
from flowkit.errors import CapabilityError, ConfigError, FlowkitError, RegistryError, suggest
from flowkit.interfaces import BuildContext, Component, kind_of
from flowkit.params import COMPONENT
from flowkit.registry import ComponentRegistry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


# ---------------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------------


@attrs.frozen
class Location:
    """Where a value sits: the file and the key path (``("path", "schedule", "sigma_min")``)."""

    source: str
    parts: tuple[str | int, ...] = ()
    overridden: frozenset[tuple[str, ...]] = frozenset()

    def child(self, key: str | int) -> Location:
        return attrs.evolve(self, parts=(*self.parts, key))

    @property
    def table(self) -> str:
        """The TOML table holding the value, e.g. ``[path.schedule]``."""
        return "[" + _dotted(self.parts[:-1]) + "]" if len(self.parts) > 1 else "(top level)"

    def where(self) -> str:
        """``file: [table] key 'k'`` (``(from --set)`` when an override put it there)."""
        if not self.parts:
            return self.source
        parts = tuple(map(str, self.parts))
        # a key inside a table that --set gave (--set run.device={...}) came from --set too
        from_set = any(parts[:i] in self.overridden for i in range(1, len(parts) + 1))
        origin = " (from --set)" if from_set else ""
        return f"{self.source}: {self.table} key '{self.parts[-1]}'{origin}"

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.where()}: {message}")


def _dotted(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ---------------------------------------------------------------------------------------------------
# Reading and overrides
# ---------------------------------------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a pipeline file; a syntax error names the file, line and column."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a pipeline file (.toml)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the pipeline file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise digits_error(str(path), text, exc) from None
    except RecursionError:
        raise ConfigError(
            f"{path}: invalid pipeline: lists or tables nest too deeply (at most {MAX_DEPTH} levels)"
        ) from None
    check_depth(data, Location(str(path)))
    return data


def load_source(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A pipeline's raw tables and the name errors give it: a file (read with :func:`read_toml`), or a
    dict (deep-copied; named ``<dict>``) whose keys must be strings."""
    if isinstance(source, Mapping):
        check_depth(source, Location("<dict>"))
        _check_keys(source, Location("<dict>"))
        return _deep_copy(dict(source)), "<dict>"
    return read_toml(source), str(source)


def _check_keys(value: Any, loc: Location) -> None:
    """Keys of a pipeline given as a dict are strings, as TOML's are."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise loc.error(f"keys are strings, found {key!r} ({type(key).__name__})")
            _check_keys(item, loc.child(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_keys(item, loc.child(i))


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"train.steps=100"`` → ``(("train", "steps"), 100)``.

    The value is read as a TOML value (``3``, ``1e-3``, ``true``, ``[64, 64]``, ``{ kind = "vp" }``,
    ``"text"``); anything that is not valid TOML is taken as a bare string (``data.kind=circles``).
    """
    shown = text if len(text) <= 80 else text[:77] + "..."
    key, sep, raw = text.partition("=")
    parts = tuple(p.strip() for p in key.split("."))
    if not sep or not all(parts):
        raise ConfigError(f"--set {shown}: expected TABLE.KEY=VALUE, e.g. --set train.steps=100")
    if len(parts) == 1:
        raise ConfigError(
            f"--set {shown}: '{parts[0]}' names no table; expected TABLE.KEY=VALUE, e.g. --set train.{text}"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError as exc:
        if raw[:1] in _TOML_STARTS:  # meant as a list, table or quoted string: say what is wrong
            raise ConfigError(f"--set {shown}: invalid TOML value: {exc}") from None
        value = raw  # a bare word: data.kind=circles
    except ValueError as exc:
        raise digits_error(f"--set {shown}", raw, exc, key) from None
    except RecursionError:
        raise ConfigError(f"--set {shown}: the value is nested too deeply") from None
    check_depth(value, Location("--set", parts))
    return parts, value


#: A value starting with one of these is TOML (a list, an inline table, a string), never a bare word.
_TOML_STARTS = ("[", "{", '"', "'")
#: Lists and tables nest at most this deep in a pipeline (no pipeline needs more; Python's recursion
#: limit, which parsing and validation would hit, is far above it).
MAX_DEPTH = 32


def check_depth(value: Any, loc: Location) -> None:
    """Refuse lists and tables nested more than :data:`MAX_DEPTH` deep, naming where (iteratively, so
    that a value too deep for recursion is reported, not crashed on)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, loc.parts)]
    while stack:
        item, parts = stack.pop()
        if len(parts) - len(loc.parts) > MAX_DEPTH:
            # name the key that holds the deep value: the path up to its first list index
            cut = next((i for i, part in enumerate(parts) if isinstance(part, int)), len(parts))
            where = Location(loc.source, parts[: max(cut, 1)])
            raise where.error(f"lists and tables nest more than {MAX_DEPTH} levels deep here")
        if isinstance(item, Mapping):
            stack.extend((v, (*parts, str(k))) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, (*parts, i)) for i, v in enumerate(item))


def apply_overrides(
    data: dict[str, Any], overrides: Sequence[str], source: str
) -> tuple[dict[str, Any], frozenset[tuple[str, ...]]]:
    """Apply ``--set`` overrides to a parsed pipeline; returns the new dict and the overridden paths."""
    data = _deep_copy(data)
    done: set[tuple[str, ...]] = set()
    for text in overrides:
        try:
            parts, value = parse_override(text)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if isinstance(child, str):  # `simulator = "heun"` then --set sample.simulator.x=1
                child = node[part] = {"kind": child}
            if not isinstance(child, dict):
                where = _dotted(parts[: i + 1])
                raise ConfigError(
                    f"{source}: --set {text}: '{where}' is a value ({describe_value(child)}), not a table"
                )
            node = child
        node[parts[-1]] = value
        done.add(parts)
    return data, frozenset(done)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------
# Structuring
# ---------------------------------------------------------------------------------------------------


class Structurer:
    """Validates plain TOML data against attrs classes and builds components through a registry."""

    def __init__(self, registry: ComponentRegistry, context: BuildContext) -> None:
        self.registry = registry
        self.context = context

    def structure(self, cls: type, table: Any, loc: Location) -> Any:
        """Build an instance of the attrs class ``cls`` from the TOML table at ``loc``."""
        if not isinstance(table, Mapping):
            raise loc.error(f"expected a table, found {describe_value(table)}")
        fields = attrs.fields(cls)
        hints = _type_hints(cls)
        names = [f.name for f in fields]
        for key in table:
            if key not in names:
                valid = ", ".join(names) if names else "(none: this component takes no parameters)"
                raise loc.child(key).error(f"unknown key.{suggest(key, names)} Valid keys: {valid}")
        values: dict[str, Any] = {}
        for field in fields:
            where = loc.child(field.name)
            tp = hints.get(field.name, Any)
            if field.name in table:
                values[field.name] = self.convert(table[field.name], tp, where, field)
            elif field.default is attrs.NOTHING:
                raise where.error(f"missing required key ({describe_type(tp)})")
            elif _is_component(field, tp, self.registry):
                default = (
                    field.default.factory() if isinstance(field.default, attrs.Factory) else field.default  # type: ignore[arg-type]
                )
                if default is not None:
                    values[field.name] = self.convert(default, tp, where, field)
        try:
            return cls(**values)
        except (ValueError, TypeError) as exc:
            raise _locate_validator_error(cls, values, loc, exc) from None

    def convert(self, value: Any, tp: Any, loc: Location, field: attrs.Attribute | None = None) -> Any:
        """Check ``value`` against the type ``tp`` and convert it (ints to floats, tables to objects)."""
        if _is_component(field, tp, self.registry):
            return self.build(_component_kind(tp, loc, self.registry), value, loc)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            options = [a for a in args if a is not type(None)]
            errors = []
            for option in options:
                try:
                    return self.convert(value, option, loc)
                except ConfigError as exc:
                    errors.append(exc)
            if len(options) == 1:
                raise errors[0]
            raise loc.error(f"expected {describe_type(tp)}, found {describe_value(value)}")
        if origin is typing.Literal:
            if value in args and not isinstance(value, bool):
                return value
            choices = ", ".join(repr(a) for a in args)
            hint = suggest(value, [str(a) for a in args]) if isinstance(value, str) else ""
            raise loc.error(f"expected one of {choices}, found {describe_value(value)}.{hint}".rstrip("."))
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                try:
                    number = float(value)
                except OverflowError:
                    digits = len(str(abs(value)))
                    raise loc.error(f"expected a number, found an integer of {digits} digits") from None
                if not math.isfinite(number):
                    raise loc.error(f"expected a finite number, found {number}")
                return number
        elif tp is str:
            if isinstance(value, str):
                return value
        elif origin in (list, tuple, Sequence) or tp in (list, tuple):
            if isinstance(value, list):
                item = args[0] if args else Any
                items = [self.convert(v, item, loc.child(i)) for i, v in enumerate(value)]
                return tuple(items) if origin is tuple or tp is tuple else items
        elif origin in (dict, Mapping):
            if isinstance(value, Mapping):
                item = args[1] if len(args) == 2 else Any
                return {k: self.convert(v, item, loc.child(k)) for k, v in value.items()}
        elif attrs.has(tp):
            return self.structure(tp, value, loc)
        else:
            return value
        raise loc.error(f"expected {describe_type(tp)}, found {describe_value(value)}")

    def build(self, kind: str, spec: Any, loc: Location) -> Component:
        """Build the ``kind`` component described by ``spec`` (a name, or a table with ``kind``)."""
        if isinstance(spec, Component):  # already built (a default given as an object)
            return spec
        shorthand = isinstance(spec, str)  # `simulator = "heun"`: errors point at the key itself
        if shorthand:
            spec = {"kind": spec}
        if not isinstance(spec, Mapping):
            raise loc.error(f"expected a {kind}: a name or a table with 'kind', found {describe_value(spec)}")
        known = self.registry.names(kind)
        default = getattr(self.registry.interface(kind), "default_name", None)
        if "kind" not in spec and default is not None:  # a kind with a default: `guidance = { scale = 2 }`
            spec = {"kind": default, **spec}
        if "kind" not in spec:
            raise loc.child("kind").error(
                f"missing required key: the {kind} to use (one of: {', '.join(known)})"
            )
        name = spec["kind"]
        kind_loc = loc if shorthand else loc.child("kind")
        if not isinstance(name, str):
            raise kind_loc.error(f"expected the name of a {kind} (a string), found {describe_value(name)}")
        try:
            entry = self.registry.get(kind, name)
        except RegistryError as exc:
            raise kind_loc.error(str(exc)) from None
        params = self.structure(entry.cls.Params, {k: v for k, v in spec.items() if k != "kind"}, loc)
        target = "[" + _dotted(loc.parts) + "]"
        try:
            component = entry.cls.from_params(params, self.context)
        except ConfigError:
            raise
        except FlowkitError as exc:
            raise type(exc)(f"{loc.source}: {target} ({kind} '{name}'): {exc}") from exc
        except (MemoryError, RuntimeError, OverflowError) as exc:  # e.g. a network too large to build
            text = str(exc)
            if isinstance(exc, RuntimeError) and not any(w in text for w in ("alloc", "memory", "overflow")):
                raise
            first = (text.strip().splitlines() or [type(exc).__name__])[0]
            target += largest_size(params)  # the size to lower, when the parameters hold one
            what = "is too large to address" if "overflow" in text.lower() else "ran out of memory"
            raise ConfigError(
                f"{loc.source}: {target} ({kind} '{name}'): building it {what} ({first[:160]}); "
                "make it smaller"
            ) from None
        component.registered_as(kind, name)
        component.registered_plugin = entry.plugin.name
        return component


def _locate_validator_error(cls: type, values: dict[str, Any], loc: Location, exc: Exception) -> ConfigError:
    """Find which field's validator rejected its value, so the error names the key."""
    for field in attrs.fields(cls):
        if field.validator is None or field.name not in values:
            continue
        try:
            field.validator(None, field, values[field.name])
        except (ValueError, TypeError) as field_exc:
            return loc.child(field.name).error(f"invalid value {values[field.name]!r}: {field_exc}")
        except Exception:  # a validator that needs the instance: fall through to the generic message
            continue
    where = f"{loc.source}: [{_dotted(loc.parts)}]" if loc.parts else loc.source
    return ConfigError(f"{where}: invalid parameters: {exc}")


def _kind_of(tp: Any, registry: ComponentRegistry | None) -> str | None:
    """The kind whose interface ``tp`` is (a kind a plugin added included), or ``None``."""
    if not isinstance(tp, type):
        return None
    if registry is not None:
        for kind in registry.kinds():
            if issubclass(tp, registry.interface(kind)):
                return kind
    return kind_of(tp)


def _is_component(field: attrs.Attribute | None, tp: Any, registry: ComponentRegistry | None = None) -> bool:
    if field is not None and field.metadata.get(COMPONENT):
        return True
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return any(_kind_of(a, registry) is not None for a in inner)


def _component_kind(tp: Any, loc: Location, registry: ComponentRegistry | None = None) -> str:
    inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    for option in inner:
        kind = _kind_of(option, registry)
        if kind is not None:
            return kind
    raise CapabilityError(f"{loc.where()}: field type {tp!r} is not a component interface")


def _type_hints(cls: type) -> dict[str, Any]:
    """The fields' types; one unresolvable annotation leaves only its own field unchecked (warned)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:
        pass
    module = sys.modules.get(cls.__module__)
    namespace = dict(vars(module)) if module is not None else {}
    hints: dict[str, Any] = {}
    for field in attrs.fields(cls):
        tp = field.type
        if isinstance(tp, str):
            try:
                tp = eval(tp, namespace)  # what typing.get_type_hints does, one field at a time
            except Exception:
                warnings.warn(
                    f"{cls.__module__}.{cls.__qualname__}.{field.name}: annotation {field.type!r} cannot be "
                    "resolved, so its values are not type-checked",
                    stacklevel=3,
                )
                tp = Any
        hints[field.name] = tp
    return hints


# ---------------------------------------------------------------------------------------------------
# Unstructuring (for the resolved pipeline in a run directory)
# ---------------------------------------------------------------------------------------------------


def unstructure(value: Any) -> Any:
    """Turn params and built components back into TOML-ready data (components become ``kind`` tables)."""
    if isinstance(value, Component):
        table = {"kind": value.registered_name}
        table.update(unstructure(value.params))
        return table
    if attrs.has(type(value)):
        out = {}
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if item is not None:
                out[field.name] = unstructure(item)
        return out
    if isinstance(value, (list, tuple)):
        return [unstructure(v) for v in value]
    if isinstance(value, Mapping):
        return {k: unstructure(v) for k, v in value.items() if v is not None}
    return value
