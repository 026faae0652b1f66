"""Helpers to declare a component's parameters as an attrs class.

A component's ``Params`` is an ``@attrs.define(frozen=True)`` class. Each field carries a one-line doc
in its metadata; the config loader validates a pipeline table against the fields' types and
validators, and ``flowkit describe`` and the pipeline reference are generated from them::

    @attrs.define(frozen=True)
    class Params:
        sigma_min: float = param(0.0, doc="Noise left at t = 1.", validator=attrs.validators.ge(0))
        schedule: Schedule = component("ot", doc="Schedule of alpha_t and beta_t.")

A field whose type is a component interface (``Schedule``, ``Simulator``, ...) is a nested component:
in TOML it is a table with a ``kind`` (``schedule = { kind = "vp", beta_max = 20 }``) or just the name
(``schedule = "vp"``); the loader builds it and stores the built component in the field.
"""

from __future__ import annotations

from typing import Any

import attrs

DOC = "doc"
COMPONENT = "component"


def param(
    default: Any = attrs.NOTHING,
    *,
    doc: str,
    validator: Any = None,
    factory: Any = None,
    converter: Any = None,
) -> Any:
    """An attrs field with a one-line ``doc``. Give ``default`` or ``factory`` (or neither: required)."""
    if factory is not None:
        return attrs.field(factory=factory, validator=validator, converter=converter, metadata={DOC: doc})
    return attrs.field(default=default, validator=validator, converter=converter, metadata={DOC: doc})


def component(default: str | dict[str, Any] | None = None, *, doc: str) -> Any:
    """A nested component field; ``default`` is a spec (a name, or a table with ``kind``) or ``None``."""
    if default is None:
        return attrs.field(default=None, metadata={DOC: doc, COMPONENT: True})
    return attrs.field(default=default, metadata={DOC: doc, COMPONENT: True})


def field_doc(field: attrs.Attribute) -> str:
    """The one-line doc of a parameter field (empty when it has none)."""
    return str(field.metadata.get(DOC, ""))
