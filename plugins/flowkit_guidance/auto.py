"""Autoguidance (Karras et al. 2024, arXiv 2406.02507): ``auto``.

The guide is a weaker model of the same task, not the model's own unconditional field: an earlier
checkpoint, a run trained shorter or with a smaller network, or a smaller network trained alongside
the model in the same run (``guide = "alongside"`` with ``[train] guide``). Both are evaluated at the same
``(x, t)`` and labels, and the guided field extrapolates from the guide towards the model,
``D_1 + w (D_1 - D_0)``: Karras' ``w_K D_1 + (1 - w_K) D_0`` with flowkit's weight ``w = w_K - 1``, so
``scale = 0`` is the model itself. The two models make errors of the same kind where the data is
hard to fit (the guide more of them), and the difference points away from them; unlike
classifier-free guidance it needs no labels and does not pull towards a class's mode, so it works for
unconditional models and keeps the variety (docs/math.md, "Autoguidance").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    ALONGSIDE,
    BuildContext,
    Guider,
    ScaleParams,
    resolve_relative,
)
from flowkit.params import param
from flowkit_guidance.guiders import UNIT, guided_in_band, not_below_t_lo


class AutoGuidance(Guider):
    """Autoguidance: ``D + w (D - D_guide)``, the guide a weaker trained model (``guide``: a run
    directory, whose ``model.pt`` or else newest checkpoint is loaded, a checkpoint file of a run, or
    ``"alongside"``: the smaller network the run trains beside the model, ``[train] guide``)."""

    @attrs.define(frozen=True)
    class Params(ScaleParams):
        guide: str = param(
            "",
            doc="The weaker model: a run directory or a checkpoint file (checkpoint-*.pt) of one, "
            'relative to the pipeline file, or "alongside": the guide the run trains beside the model '
            "([train] guide).",
        )
        t_lo: float = param(
            0.0,
            doc="Guidance starts at this time (0: from the noise): the guidance interval.",
            validator=UNIT,
        )
        t_hi: float = param(
            1.0, doc="Guidance ends after this time (1: up to the data).", validator=[*UNIT, not_below_t_lo]
        )

    @classmethod
    def from_params(cls, params: AutoGuidance.Params, context: BuildContext) -> AutoGuidance:
        """Resolve ``guide`` against the pipeline file's folder (kept absolute in the resolved pipeline)."""
        if not params.guide:
            raise CapabilityError(
                "guider 'auto' needs guide = the run directory or checkpoint of a weaker model of the "
                'same task (e.g. guide = "runs/moons-short"), or "alongside" with [train] guide'
            )
        if params.guide == ALONGSIDE:
            return cls(params)
        resolved = resolve_relative(params.guide, context.source).resolve()
        return cls(attrs.evolve(params, guide=str(resolved)))

    @property
    def guide_model(self) -> Path | Literal["alongside"]:
        """The guide's run directory or checkpoint, or :data:`ALONGSIDE`."""
        return ALONGSIDE if self.params.guide == ALONGSIDE else Path(self.params.guide)

    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``cond + w (cond - uncond)`` with ``uncond`` the guide's field, on ``t_lo <= t <= t_hi``
        (the model's own field outside); ``(B, *D)``."""
        p = self.params
        return guided_in_band(cond, uncond, t, p.scale, p.t_lo, p.t_hi)
