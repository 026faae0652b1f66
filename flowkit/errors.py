"""The errors flowkit raises for things a user can fix.

Every error a user can cause derives from :class:`FlowkitError`. The CLI prints such errors as one
paragraph without a traceback (``--debug`` shows it); any other exception is a bug in flowkit or in a
plugin and is shown with its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FlowkitError(Exception):
    """Base class of errors caused by user input (a pipeline file, a CLI option, a plugin)."""


class ConfigError(FlowkitError):
    """A pipeline file or ``--set`` override is invalid.

    The message names the file, the table and key path, what was found and what was expected.
    """


class RegistryError(FlowkitError):
    """A plugin registered something invalid, or a component name is unknown."""


class PluginError(FlowkitError):
    """A plugin could not be loaded, blocked or called."""


class CapabilityError(FlowkitError):
    """Components that cannot work together (e.g. an ODE simulator given an SDE).

    Raised when the pipeline is built, never halfway through a run.
    """


def suggest(word: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the nearest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
