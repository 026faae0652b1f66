"""Numbers too large for a pipeline, refused by key (for :mod:`flowkit.config`).

Python converts integers of at most ``sys.get_int_max_str_digits()`` (4,300) digits from text; a longer
one makes the TOML parser raise a bare ``ValueError`` that names neither the file's line nor the key,
so the key is found here in the text. A size that overflows or exhausts memory while a component is
built is named by its largest integer parameter, the one to lower.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import attrs

from flowkit.errors import ConfigError

_LONG = re.compile(r"[+-]?\d[\d_]*")
_HEADER = re.compile(r"^\s*\[+\s*([^\]]+?)\s*\]+\s*(#.*)?$")


def digits_error(where: str, text: str, exc: ValueError, key: str | None = None) -> ConfigError:
    """The error for the ``ValueError`` parsing ``text`` raised: an integer with too many digits named
    by its key (``key`` for ``--set``; else read from ``text``, a TOML file), or the error itself."""
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
    long = next((m for m in _LONG.finditer(text) if _digits(m.group()) > limit), None)
    if long is None:
        return ConfigError(f"{where}: invalid TOML: {exc}")
    digits = _digits(long.group())
    if key is None:
        lines = text[: long.start()].split("\n")
        tables = [m.group(1) for m in map(_HEADER.match, lines[:-1]) if m is not None]
        name = lines[-1].split("=", 1)[0].strip() if "=" in lines[-1] else "?"
        key = f"[{tables[-1]}] key '{name}'" if tables else f"key '{name}'"
        where = f"{where}: {key} (line {len(lines)})"
    return ConfigError(
        f"{where}: an integer of {digits} digits; flowkit reads integers of at most {limit} digits"
    )


def _digits(number: str) -> int:
    return len(number.strip("+-").replace("_", ""))


def largest_size(params: Any) -> str:
    """`` key 'NAME'``: the parameter holding the largest integer (alone or in a list), ``""`` when
    none does (what to lower when building a component ran out of memory)."""
    best: tuple[int, str] | None = None
    if attrs.has(type(params)):
        for field in attrs.fields(type(params)):
            value = getattr(params, field.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                if isinstance(item, int) and not isinstance(item, bool) and (best is None or item > best[0]):
                    best = (item, field.name)
    return f" key '{best[1]}'" if best is not None else ""
