"""The error this package raises for invalid parameters."""

from __future__ import annotations

from flowkit.errors import ConfigError


class InvalidParameter(ConfigError, ValueError):
    """A parameter value is invalid; the message names the parameter and what would be valid.

    It is a :class:`ConfigError` (a user can fix it) and a ``ValueError``, the exception attrs
    validators raise, so a config loader that locates validator failures locates this one too.
    """
