"""What a simulator integrates, built from the roles a model provides (``docs/math.md``, "Sampling").

* :class:`FlowODE` (``flow``): ``dX = u_t(X) dt`` from a velocity.
* :class:`ExtensionSDE` (``extension-sde``): ``dX = [u_t(X) + sigma_t^2 / 2 score_t(X)] dt + sigma_t dW``,
  which has the same marginals ``p_t`` as the flow for every ``sigma_t >= 0`` (Fokker–Planck).
* :class:`LangevinSDE` (``langevin``): ``dX = sigma^2 / 2 score(X) dt + sigma dW`` for a fixed target ``p``.

A pipeline builds them with :meth:`from_params`, which takes the modules from ``context.role(...)``
(converting a score into a velocity or back through a Gaussian path). Tests and scripts pass the
fields directly: ``FlowODE(velocity=lambda x, t: -x)``. A field is any callable
``f(x (B, *D), t (B,)) -> (B, *D)``, usually a :class:`flowkit.interfaces.VectorField` or
:class:`flowkit.interfaces.ScoreModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    SDE,
    BuildContext,
    GaussianProbabilityPath,
    ProbabilityFlowODE,
    ScoreModel,
    per_sample,
)
from flowkit.params import param

Field = Callable[[Tensor, Tensor], Tensor]


def _missing(dynamics: str, role: str, keyword: str) -> CapabilityError:
    return CapabilityError(
        f"dynamics '{dynamics}' was built without a {role}; build it through a pipeline (the model "
        f"provides the {role}) or pass it directly, e.g. {keyword}=my_module"
    )


class FlowODE(ProbabilityFlowODE):
    """The flow ODE ``dX_t = u_t(X_t) dt`` of a velocity field ``u``.

    ``velocity(x (B, *D), t (B,)) -> (B, *D)``; the drift is the velocity itself. ``path`` is the
    pipeline's Gaussian path (``None`` for any other path), through which DPM-Solver++ and EDM read
    the data prediction ``E[z | x_t]`` off the velocity.
    """

    needs = frozenset({"velocity"})

    def __init__(
        self,
        params: Any = None,
        *,
        velocity: Field | None = None,
        path: GaussianProbabilityPath | None = None,
    ) -> None:
        super().__init__(params)
        self.velocity = velocity
        self.path = path

    @classmethod
    def from_params(cls, params, context: BuildContext) -> FlowODE:
        """Take the velocity from ``context`` (converted from a score by a Gaussian path if needed)."""
        path = context.path if isinstance(context.path, GaussianProbabilityPath) else None
        flow = cls(params, velocity=context.role("velocity", needed_by="dynamics 'flow'"), path=path)
        flow.constraint = context.path  # its projection, applied by the simulators
        return flow

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``u_t(x)``, shape ``(B, *D)``."""
        if self.velocity is None:
            raise _missing("flow", "velocity", "velocity")
        return self.velocity(x, t)


class ExtensionSDE(SDE):
    """The extension-trick SDE with the marginals of the flow: drift ``u + sigma_t^2 / 2 * score``.

    ``sigma_t`` follows ``sigma_schedule``:

    * ``"constant"``: ``sigma_t = sigma``;
    * ``"linear-decay"``: ``sigma_t = sigma (1 - t)``, no noise at the data end ``t = 1``.

    Near ``t = 1`` the marginal score of data concentrated on points or a thin set blows up (for the
    OT path with ``sigma_min = 0`` it grows like ``1 / (1 - t)^2`` off the data). Euler–Maruyama
    evaluates the drift only at the grid times before the last one, so with a grid that ends at the
    path's ``t_range`` end the score is always finite; for a Gaussian path with smooth data a constant
    ``sigma`` works. Where the score is stiff near ``t = 1``, ``"linear-decay"`` keeps
    ``sigma_t^2 * score`` bounded, and a ``power`` time grid puts small steps there.
    """

    needs = frozenset({"velocity", "score"})

    @attrs.define(frozen=True)
    class Params:
        sigma: float = param(
            1.0, doc="Noise scale sigma (sigma = 0 is the flow ODE).", validator=attrs.validators.ge(0)
        )
        sigma_schedule: Literal["constant", "linear-decay"] = param(
            "constant",
            doc="sigma_t: 'constant' = sigma, 'linear-decay' = sigma (1 - t).",
            validator=attrs.validators.in_(["constant", "linear-decay"]),
        )

    def __init__(
        self,
        params: ExtensionSDE.Params | None = None,
        *,
        velocity: Field | None = None,
        score: Field | None = None,
    ) -> None:
        super().__init__(params)
        self.velocity = velocity
        self.score = score

    @classmethod
    def from_params(cls, params: ExtensionSDE.Params, context: BuildContext) -> ExtensionSDE:
        """Take the velocity and the score from ``context`` (one may be converted from the other)."""
        needed_by = "dynamics 'extension-sde'"
        sde = cls(
            params,
            velocity=context.role("velocity", needed_by=needed_by),
            score=context.role("score", needed_by=needed_by),
        )
        sde.constraint = context.path  # its projection, applied by the simulators
        return sde

    def diffusion(self, t: Tensor) -> Tensor:
        """``sigma_t``, shape ``(B,)``."""
        if self.params.sigma_schedule == "linear-decay":
            return self.params.sigma * (1.0 - t)
        return t.new_full(t.shape, self.params.sigma)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``u_t(x) + sigma_t^2 / 2 * score_t(x)``, shape ``(B, *D)``."""
        if self.velocity is None:
            raise _missing("extension-sde", "velocity", "velocity")
        velocity = self.velocity(x, t)
        if self.params.sigma == 0:
            return velocity  # the flow ODE: no need to evaluate the score
        if self.score is None:
            raise _missing("extension-sde", "score", "score")
        half_var = 0.5 * self.diffusion(t).square()
        if isinstance(self.score, ScoreModel) and self.score.velocity_source is self.velocity:
            score = self.score.from_velocity(x, t, velocity)  # one network evaluation, not two
        else:
            score = self.score(x, t)
        return velocity.addcmul(per_sample(half_var, x), score)


class LangevinSDE(SDE):
    """Overdamped Langevin dynamics for a fixed target ``p``: ``dX = sigma^2 / 2 score(X) dt + sigma dW``.

    The target is the model's score at the fixed time ``t_fixed`` (``1.0``: the data), clamped into
    the path's ``t_range`` where a path is known (the score may be singular at ``t = 1``). The
    simulation time ``t`` only sets the duration: the dynamics is time-homogeneous, and a run over
    ``[t_start, t_end]`` mixes like the standard Langevin diffusion ``dX = score dt + sqrt(2) dW``
    run for ``sigma^2 (t_end - t_start) / 2``; give it enough steps and a long enough grid (or a
    larger ``sigma``) to forget its start. Euler–Maruyama's stationary law is biased by ``O(h)``.
    """

    needs = frozenset({"score"})

    @attrs.define(frozen=True)
    class Params:
        sigma: float = param(
            1.0, doc="Noise scale sigma; the drift is sigma^2 / 2 * score.", validator=attrs.validators.gt(0)
        )
        t_fixed: float = param(
            1.0,
            doc="Time at which the score defines the target (clamped to the path).",
            validator=[attrs.validators.ge(0), attrs.validators.le(1)],
        )

    def __init__(
        self,
        params: LangevinSDE.Params | None = None,
        *,
        score: Field | None = None,
        t_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(params)
        self.score = score
        t_fixed = self.params.t_fixed
        if t_range is not None:
            t_fixed = min(max(t_fixed, t_range[0]), t_range[1])
        #: The time at which the score is evaluated (``t_fixed`` clamped into ``t_range``).
        self.score_time = float(t_fixed)

    @classmethod
    def from_params(cls, params: LangevinSDE.Params, context: BuildContext) -> LangevinSDE:
        """Take the score from ``context``; clamp ``t_fixed`` into ``context.path.t_range``."""
        t_range = context.path.t_range if context.path is not None else None
        langevin = cls(params, score=context.role("score", needed_by="dynamics 'langevin'"), t_range=t_range)
        langevin.constraint = context.path  # its projection, applied by the simulators
        return langevin

    def diffusion(self, t: Tensor) -> Tensor:
        """``sigma``, shape ``(B,)``."""
        return t.new_full(t.shape, self.params.sigma)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``sigma^2 / 2 * score(x, t_fixed)``, shape ``(B, *D)`` (``t`` is ignored)."""
        if self.score is None:
            raise _missing("langevin", "score", "score")
        return self.score(x, t.new_full(t.shape, self.score_time)).mul(0.5 * self.params.sigma**2)
