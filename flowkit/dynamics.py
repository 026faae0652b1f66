"""The sampling side of the contract: dynamics (an ODE or SDE), time grids and simulators.
:mod:`flowkit.interfaces` re-exports every name.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from flowkit.building import Component
from flowkit.errors import CapabilityError
from flowkit.paths import GaussianProbabilityPath, ProbabilityPath
from flowkit.records import Progress

# ---------------------------------------------------------------------------------------------------
# Dynamics and simulators
# ---------------------------------------------------------------------------------------------------


class ODE(Component):
    """``dX_t = drift(X_t, t) dt``. ``needs`` lists the roles it is built from (see BuildContext).

    Dynamics may offer more than a drift (an average velocity, jump rates): a simulator that knows
    them calls them, and the counting wrapper of :mod:`flowkit.solvers` forwards them, counting a call
    of each method named in ``evaluations`` as one network evaluation, like a drift's. Dynamics and
    simulator check each other when the pipeline is built: :meth:`Simulator.check` and
    :meth:`check_simulator` (both through :func:`check_pair`).

    ``constraint`` is the path whose :meth:`~flowkit.interfaces.ProbabilityPath.project` every
    simulator applies after each step (``None``: unconstrained); dynamics built from a pipeline take
    it from ``context.path``.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    #: The methods besides :meth:`drift` that evaluate the network once per call (``{"average"}``).
    evaluations: ClassVar[frozenset[str]] = frozenset()
    constraint: ProbabilityPath | None = None

    def check_simulator(self, simulator: Simulator) -> None:
        """Raise :class:`CapabilityError` when ``simulator`` cannot integrate these dynamics (e.g. a
        jump process refuses an ODE solver, which only calls :meth:`drift`). Default: accept."""

    @property
    def projects(self) -> bool:
        """Whether :meth:`project` changes states (a simulator skips the call otherwise)."""
        return self.constraint is not None and self.constraint.projects

    def project(self, x: Tensor) -> Tensor:
        """``x (B, *D)`` projected onto the support of the path's samples (the identity by default)."""
        return x if self.constraint is None else self.constraint.project(x)

    @abc.abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift at ``x (B, *D)`` and ``t (B,)``, shape ``(B, *D)``."""


class ProbabilityFlowODE(ODE):
    """An ODE whose drift is the marginal velocity ``u_t`` of a Gaussian path: the probability-flow ODE.

    Samplers that work with the path's schedule rather than the drift alone (DPM-Solver++, EDM's Heun in
    ``sigma = beta / alpha``) need ``path`` (the :class:`GaussianProbabilityPath` the model's roles were
    converted through, ``None`` when the pipeline's path is not Gaussian) and :meth:`data_prediction`.
    """

    path: GaussianProbabilityPath | None = None

    def data_prediction(self, x: Tensor, t: Tensor) -> Tensor:
        """``E[z | x_t = x]`` at ``x (B, *D)``, ``t (B,)``: one drift evaluation; ``(B, *D)``."""
        if self.path is None:
            raise CapabilityError(
                f"dynamics '{self.registered_name}' has no Gaussian path, so no data prediction; "
                f'use [path] kind = "gaussian"'
            )
        return self.path.data_from_velocity(x, self.drift(x, t), t)


class SDE(ODE):
    """``dX_t = drift(X_t, t) dt + diffusion(t) dW_t``."""

    @abc.abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``sigma_t``, shape ``(B,)`` (scalar noise scale per sample)."""


class TimeGrid(Component):
    """The times a simulator visits (or, for an adaptive one, reports its solution at)."""

    @abc.abstractmethod
    def __call__(self, steps: int, t_start: float, t_end: float) -> Tensor:
        """Increasing grid of ``steps + 1`` times from ``t_start`` to ``t_end``, shape ``(steps + 1,)``."""


class Simulator(Component):
    """An integrator of an :class:`ODE` or :class:`SDE`, fixed-step or adaptive.

    What it is, declared so the engine can plan before any work starts:

    * ``solves``: the dynamics class it integrates (``ODE`` or ``SDE``); see :meth:`check`.
    * ``adaptive``: ``False`` for a fixed-step simulator, which steps exactly between consecutive
      times of ``ts``; ``True`` for one that chooses its own steps (error control) and returns its
      solution at the times of ``ts``. The engine gives an adaptive simulator only the end points
      of the grid for sampling.
    * ``capturable``: whether :meth:`simulate` may be captured as a CUDA graph: fixed shapes, no host
      synchronisation, no data-dependent control flow. Adaptive step control is not capturable.

    ``last_nfe`` is the number of drift evaluations of the last call (per batch). Fixed-step
    simulators usually derive from :class:`flowkit.solvers.FixedStepSimulator`, which implements
    both methods from one ``step``.
    """

    solves: ClassVar[type] = ODE
    adaptive: ClassVar[bool] = False
    capturable: ClassVar[bool] = True
    last_nfe: int = 0

    def check(self, dynamics: ODE) -> None:
        """Raise :class:`CapabilityError` when this simulator cannot integrate ``dynamics``.

        An ODE simulator refuses an SDE (it would silently drop the noise), although ``SDE`` derives
        from ``ODE``; an SDE simulator accepts an ODE too (the noise-free case).
        """
        if not isinstance(dynamics, ODE):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates flowkit dynamics (an ODE or SDE "
                f"component), but got a {type(dynamics).__name__}; build the dynamics from the "
                f'[sample] table (e.g. dynamics = "flow")'
            )
        name = dynamics.display_name
        kind = "SDE" if isinstance(dynamics, SDE) else "ODE"
        if self.solves is ODE and isinstance(dynamics, SDE):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates an ODE, but dynamics '{name}' is an SDE; "
                f'choose a simulator for an SDE (e.g. "euler-maruyama") or ODE dynamics ("flow")'
            )
        if not isinstance(dynamics, self.solves) and not issubclass(self.solves, SDE):
            raise CapabilityError(
                f"simulator '{self.registered_name}' integrates an {self.solves.__name__}, but dynamics "
                f"'{name}' is an {kind}; choose a simulator for an {kind} or other dynamics"
            )

    @abc.abstractmethod
    def simulate(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """Integrate from ``x (B, *D)`` at ``ts[0]`` to ``ts[-1]`` (``ts`` is ``(T + 1,)``, increasing);
        returns the final state ``(B, *D)``. Noise comes from ``generator``; ``progress(done, total)``
        is called as the integration advances. Sets ``last_nfe``."""

    @abc.abstractmethod
    def simulate_trajectory(
        self, dynamics: ODE, x: Tensor, ts: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Like :meth:`simulate`, returning the state at every time of ``ts``: ``(T + 1, B, *D)``."""


def check_pair(simulator: Simulator, dynamics: ODE) -> None:
    """Raise :class:`CapabilityError` unless ``simulator`` and ``dynamics`` accept each other: the
    simulator's :meth:`Simulator.check`, then the dynamics' :meth:`ODE.check_simulator`."""
    simulator.check(dynamics)
    dynamics.check_simulator(simulator)
