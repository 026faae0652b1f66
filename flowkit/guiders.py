"""Guidance at sampling time, the kind ``guider``: how the conditional and unconditional evaluations of
a trained field are combined. :mod:`flowkit.interfaces` re-exports every name.

A conditional model's field (a velocity or a score, the role its loss trains) is evaluated at
``(x, t)`` twice, once with the asked labels and once with the null label, in one batch of ``2B``;
:meth:`Guider.combine` turns the two into the guided field the ``[sample]`` dynamics integrate. The
engine builds the guider once, with the pipeline (``[sample] guidance = { kind = "...", ... }``), and
wraps the field so that every dynamics and simulator samples the guided model without knowing of
labels (docs/math.md, "Guidance").
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar, Literal

import attrs
from torch import Tensor

from flowkit.building import Component
from flowkit.params import param


def _check_classes(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, list):
        if any(isinstance(c, bool) or not isinstance(c, int) for c in value):
            raise ValueError(f'classes must be "all", "null" or a list of class indices; got {value!r}')
    elif value not in ("all", "null"):
        raise ValueError(f'classes must be "all", "null" or a list of class indices; got {value!r}')


@attrs.define(frozen=True)
class GuiderParams:
    """What every guider's table holds: the classes asked for. A guider's ``Params`` derive from it
    (or from :class:`ScaleParams`)."""

    classes: Literal["all", "null"] | list[int] = param(
        "all",
        doc='Classes asked for, cycled over the samples: "all", a list of class indices, or "null" '
        "(unconditional samples).",
        validator=_check_classes,
    )


@attrs.define(frozen=True)
class ScaleParams(GuiderParams):
    """A guider with a guidance weight ``w`` (``scale``): classifier-free guidance and its variants."""

    scale: float = param(
        0.0,
        doc="Guidance weight w: the field (1 + w) f(x, t | y) - w f(x, t | null); 0: conditional, unguided.",
        validator=attrs.validators.ge(0),
    )


#: What :attr:`Guider.guide_model` returns for the guide trained alongside the model in the same run
#: (``[train] guide``), in place of another run's directory or checkpoint.
ALONGSIDE: Literal["alongside"] = "alongside"


def classifier_free(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """``(1 + w) cond - w uncond``, computed as ``cond + w (cond - uncond)`` (one fused multiply-add):
    the arithmetic every guider that reduces to classifier-free guidance reduces to, bit for bit."""
    return cond.add(cond - uncond, alpha=scale)


class Guider(Component):
    """Combines the conditional and unconditional evaluations of the trained field.

    :meth:`combine` gets ``cond`` and ``uncond``, each ``(B, *D)``, the field (velocity or score) at
    ``x (B, *D)`` and ``t (B,)`` with the asked labels and with the null label, and returns the guided
    field ``(B, *D)``. It must not synchronise with the device (no ``.item()``, no branching on tensor
    values): the sampler may run as a captured graph.

    The engine calls :meth:`prepare` once, when the pipeline is built, with the ``[sample]`` grid, and
    :meth:`reset` before each simulation (a guider that keeps state across the evaluations of one
    simulation, such as a momentum, clears it there and says so with :attr:`stateful`: the engine
    then refuses to capture the sampler as a graph).

    ``Params`` derive from :class:`GuiderParams` (``classes``); :attr:`needs_unconditional` is false
    when the unconditional evaluation would be unused (the engine then evaluates the conditional
    field alone and never calls :meth:`combine`).
    """

    Params: ClassVar[type] = ScaleParams
    #: The guider a ``[sample] guidance`` table without ``kind`` builds (classifier-free guidance).
    default_name: ClassVar[str] = "cfg"

    @property
    def stateful(self) -> bool:
        """Whether :meth:`combine` keeps state across the evaluations of a simulation (cleared by
        :meth:`reset`). Default: no."""
        return False

    @property
    def classes(self) -> Literal["all", "null"] | list[int]:
        """The classes asked for (``"all"`` where the parameters do not say)."""
        classes: Literal["all", "null"] | list[int] = getattr(self.params, "classes", "all")
        return classes

    @property
    def needs_unconditional(self) -> bool:
        """Whether :meth:`combine` uses the unconditional evaluation: by default, unless ``scale`` is 0."""
        return float(getattr(self.params, "scale", 1.0)) != 0.0

    @property
    def guide_model(self) -> Path | Literal["alongside"] | None:
        """A run directory or checkpoint whose model is the guide (autoguidance), or :data:`ALONGSIDE`
        for the guide trained alongside the model (``[train] guide``): the engine loads it when the
        pipeline is built and passes its field at the same ``(x, t)`` and labels to :meth:`combine`
        as ``uncond``, in place of the model's own null-label evaluation; an unconditional model may
        then be guided too. ``None`` (the default): the null label."""
        return None

    def prepare(self, times: Tensor | None) -> None:
        """Called once when the pipeline is built: ``times (T + 1,)`` float64 on the CPU, the
        ``[sample]`` grid of a fixed-step simulator (``None`` for an adaptive one). Default: nothing."""

    def reset(self) -> None:
        """Called before each simulation (when the labels are set). Default: nothing."""

    @abc.abstractmethod
    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The guided field ``(B, *D)`` from ``cond``, ``uncond`` ``(B, *D)`` at ``x (B, *D)``, ``t (B,)``."""
