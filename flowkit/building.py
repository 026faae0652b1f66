"""Build-time parts of the contract: the :class:`Component` base every registered class derives from,
and the conversion of one model role into another through a path (what
:meth:`flowkit.interfaces.BuildContext.role` does). Imports no other contract module but the records.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from torch import nn

from flowkit.errors import CapabilityError
from flowkit.records import NoParams, StageContext


class Component(abc.ABC):
    """Base of every registered component.

    ``Params`` is the attrs class of the component's parameters. ``from_params`` builds an instance
    from validated parameters and the :class:`BuildContext` (what was built before it). The config
    loader sets ``registered_kind`` and ``registered_name`` on every instance it builds, so a resolved
    pipeline can be written back to TOML.
    """

    Params: ClassVar[type] = NoParams
    registered_kind: str | None = None
    registered_name: str | None = None
    #: The plugin that registered it (set by the config loader; ``None`` for one built by hand).
    registered_plugin: str | None = None

    def __init__(self, params: Any = None) -> None:
        super().__init__()
        self.params = params if params is not None else type(self).Params()

    @property
    def display_name(self) -> str:
        """The name a message gives the component: its registered name, else its class's."""
        return self.registered_name or type(self).__name__

    @property
    def described(self) -> str:
        """The component as a message about what it did names it: ``kind 'name' (plugin 'p')``."""
        text = f"{self.registered_kind or 'component'} '{self.display_name}'"
        return text + (f" (plugin '{self.registered_plugin}')" if self.registered_plugin else "")

    def registered_as(self, kind: str | None, name: str | None) -> None:
        """Take the registry's identity ``(kind, name)``: the config loader's stamp on what it builds,
        and what a wrapper or a rebuilt copy takes from the component it stands for."""
        self.registered_kind, self.registered_name = kind, name

    @classmethod
    def from_params(cls, params: Any, context: Any) -> Component:
        """Build the component from its validated ``params``. Override to use the ``context``, the
        :class:`flowkit.interfaces.BuildContext` of what was built before it."""
        return cls(params)

    def setup(self, stage: StageContext) -> None:  # noqa: B027 (optional: a no-op by default)
        """One-time work before the component is used, given the run's seed, device and directory.

        The engine calls it on every built component (nested ones included) when a stage starts —
        ``train``, ``sample``, ``evaluate`` of a run, and ``flowkit sample`` / ``evaluate`` /
        ``likelihood`` on a finished one — never when a pipeline is only built (``flowkit validate``).
        It is called at the start of every stage: work worth doing once keeps a flag. Random draws
        come from ``stage.generator(name)``. Default: nothing."""


def convert_role(roles: dict[str, nn.Module], path: Any, name: str, needed_by: str) -> nn.Module:
    """The module playing ``name`` (``"velocity"`` or ``"score"``) among ``roles``, converted through
    ``path`` (a :class:`flowkit.interfaces.ProbabilityPath`, or ``None``) where it converts roles; a
    converted role is added to ``roles``. Raises :class:`CapabilityError` naming ``needed_by`` when
    nothing provides it."""
    if name not in roles and path is not None and path.converts_roles:
        if name == "score" and "velocity" in roles:
            roles["score"] = path.score_from_velocity(roles["velocity"])
        elif name == "velocity" and "score" in roles:
            roles["velocity"] = path.velocity_from_score(roles["score"])
    if name in roles:
        return roles[name]
    have = ", ".join(sorted(roles)) or "nothing"
    path_name = path.registered_name if path is not None else "(none)"
    raise CapabilityError(
        f"{needed_by} needs a {name}, but the model provides {have} and path '{path_name}' "
        f"cannot convert between a score and a velocity; train the {name} (a loss that trains "
        f"a {name}) or use a Gaussian path"
    )
