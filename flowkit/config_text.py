"""How the configuration loader (:mod:`flowkit.config`) names types and values in its messages:
``a list of integers``, ``"circle" (a string)``."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

import attrs

from flowkit.interfaces import kind_of


def describe_type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, Sequence):
        return f"a list of {plural(args[0]) if args else 'values'}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args if a is not type(None))
    if isinstance(tp, type) and kind_of(tp):
        return f"a {kind_of(tp)} (a name or a table with 'kind')"
    if attrs.has(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, describe_type(tp))


def describe_value(value: Any) -> str:
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    kind = next((v for k, v in kinds.items() if type(value) is k), type(value).__name__)
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if isinstance(value, str):
        shown = f'"{value}"'
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} ({kind})"
