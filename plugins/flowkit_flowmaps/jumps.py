"""Sampling with an average velocity: the dynamics ``mean-flow`` and the simulator ``mean-flow-jump``.

A MeanFlow model offers ``u(x, t, r)``, the average velocity of the flow over ``[t, r]`` from the state
``x`` at time ``t``; a jump ``x_r = x_t + (r - t) u(x_t, t, r)`` is then exact for the learned flow,
whatever its length. :class:`MeanFlowJump` jumps over the ``[sample]`` grid, one network evaluation per
step. The dynamics' drift is ``u(x, t, t)``, the instantaneous velocity, so ODE simulators (``euler``,
``heun``, ...) integrate the same model too; the jump simulator refuses dynamics without an average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    ODE,
    BuildContext,
    GaussianProbabilityPath,
    ProbabilityFlowODE,
    per_sample,
)
from flowkit.solvers import FixedStepSimulator
from flowkit_flowmaps.meanflow import AVERAGE_VELOCITY

Average = Callable[[Tensor, Tensor, Tensor], Tensor]


class MeanFlowDynamics(ProbabilityFlowODE):
    """The flow of a two-time model: ``average(x, t, r) = u(x, t, r)`` and ``drift(x, t) = u(x, t, t)``.

    ``average(x (B, *D), t (B,), r (B,)) -> (B, *D)`` is the model's ``average-velocity`` role (what
    ``[loss] kind = "meanflow"`` trains). Tests pass it directly: ``MeanFlowDynamics(average=f)``.
    """

    needs = frozenset({AVERAGE_VELOCITY})
    evaluations = frozenset({"average"})  # each jump is one network evaluation (the sampler's last_nfe)

    def __init__(
        self,
        params: Any = None,
        *,
        average: Average | None = None,
        path: GaussianProbabilityPath | None = None,
    ) -> None:
        super().__init__(params)
        self._average = average
        self.path = path

    @classmethod
    def from_params(cls, params: Any, context: BuildContext) -> MeanFlowDynamics:
        """Take the average velocity from the model's roles; refuses a model that has none."""
        if AVERAGE_VELOCITY not in context.roles:
            have = ", ".join(sorted(context.roles)) or "nothing"
            raise CapabilityError(
                f"dynamics 'mean-flow' needs the average velocity u(x, t, r) of a two-time model, but the "
                f'model provides {have}; train it with [loss] kind = "meanflow" or "shortcut", or use '
                'dynamics = "flow"'
            )
        path = context.path if isinstance(context.path, GaussianProbabilityPath) else None
        dynamics = cls(params, average=context.roles[AVERAGE_VELOCITY], path=path)
        dynamics.constraint = context.path  # its projection, applied by the simulators
        return dynamics

    def average(self, x: Tensor, t: Tensor, r: Tensor) -> Tensor:
        """``u(x, t, r)``: the mean velocity over ``[t, r]`` from ``x (B, *D)`` at ``t (B,)``; ``(B, *D)``."""
        if self._average is None:
            raise CapabilityError(
                "dynamics 'mean-flow' was built without an average velocity; build it through a pipeline "
                "(a model trained by the meanflow loss) or pass it directly, e.g. average=my_module"
            )
        return self._average(x, t, r)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``u(x, t, t)``, the instantaneous velocity; ``(B, *D)``."""
        return self.average(x, t, t)


class MeanFlowJump(FixedStepSimulator):
    """``x <- x + h u(x, t, t + h)`` between consecutive grid times: the average-velocity jump, one
    network evaluation per step (``last_nfe = steps``); exact for any step where ``u`` is the exact
    average velocity. Needs dynamics with ``average(x, t, r)`` (``mean-flow``): :meth:`check` refuses
    the others (``flow`` has only a drift) when the pipeline is built."""

    def check(self, dynamics: ODE) -> None:
        super().check(dynamics)
        if not callable(getattr(dynamics, "average", None)):
            name = dynamics.display_name
            raise CapabilityError(
                f"simulator 'mean-flow-jump' jumps with an average velocity u(x, t, r), but dynamics "
                f"'{name}' offers only a drift; use dynamics = \"mean-flow\" (a model trained by "
                f'[loss] kind = "meanflow"), or an ODE simulator such as "euler" or "heun"'
            )

    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from ``t (B,)`` by ``h (B,)``: ``x + h u(x, t, t + h)``."""
        average = dynamics.average(x, t, t + h)  # type: ignore[attr-defined]  # check() made sure
        return torch.addcmul(x, per_sample(h, x), average)
