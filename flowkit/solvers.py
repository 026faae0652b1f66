"""A base for fixed-step simulators: implement one ``step``, get ``simulate`` and ``simulate_trajectory``.

:class:`FixedStepSimulator` runs ``step`` over consecutive times of the grid and counts drift
evaluations through :func:`counted`, a wrapper that keeps the dynamics' type (an SDE stays an SDE, so a
step may test ``isinstance(dynamics, SDE)``) and forwards every other method of the dynamics.
:meth:`GridSimulator.walk` is the grid bookkeeping any grid simulator shares (counting, the path's
projection, the trajectory, progress). Plugins use it as they like; the engine only sees the
:class:`~flowkit.interfaces.Simulator` contract.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from flowkit.interfaces import ODE, SDE, ProbabilityFlowODE, Progress, Simulator


class _CountedODE(ODE):
    """``dynamics`` with its drift evaluations counted in ``count``; any other attribute (a method the
    dynamics offers besides the drift) is the dynamics' own, and a call of one it names in
    ``evaluations`` counts too."""

    def __init__(self, dynamics: ODE) -> None:
        super().__init__(dynamics.params)
        self.dynamics = dynamics
        self.registered_as(dynamics.registered_kind, dynamics.registered_name)
        self.constraint = dynamics.constraint
        self.count = 0

    def __getattr__(self, name: str) -> Any:
        # Only reached for what the wrapper itself lacks; "dynamics" is guarded against recursion
        # before __init__ has set it (copy, pickle).
        if name == "dynamics":
            raise AttributeError(name)
        found = getattr(self.dynamics, name)
        if name not in type(self.dynamics).evaluations:
            return found

        def evaluation(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return found(*args, **kwargs)

        return evaluation

    @property
    def projects(self) -> bool:
        return self.dynamics.projects

    def project(self, x: Tensor) -> Tensor:
        return self.dynamics.project(x)

    def check_simulator(self, simulator: Simulator) -> None:
        self.dynamics.check_simulator(simulator)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        self.count += 1
        return self.dynamics.drift(x, t)


class _CountedSDE(_CountedODE, SDE):
    def diffusion(self, t: Tensor) -> Tensor:
        return self.dynamics.diffusion(t)  # type: ignore[attr-defined]


class _CountedFlow(_CountedODE, ProbabilityFlowODE):
    """A probability-flow ODE whose data predictions count too (each is one drift evaluation)."""

    def __init__(self, dynamics: ProbabilityFlowODE) -> None:
        super().__init__(dynamics)
        self.path = dynamics.path

    def data_prediction(self, x: Tensor, t: Tensor) -> Tensor:
        self.count += 1
        return self.dynamics.data_prediction(x, t)  # type: ignore[attr-defined]


def counted(dynamics: ODE) -> _CountedODE:
    """``dynamics`` wrapped to count drift evaluations (``.count``); an SDE stays an :class:`SDE`, and a
    :class:`~flowkit.interfaces.ProbabilityFlowODE` keeps its path and counts its data predictions."""
    if isinstance(dynamics, SDE):
        return _CountedSDE(dynamics)
    if isinstance(dynamics, ProbabilityFlowODE):
        return _CountedFlow(dynamics)
    return _CountedODE(dynamics)


class GridSimulator(Simulator):
    """A simulator that visits exactly the times of its grid: implement :meth:`_run`, which integrates
    ``x`` over ``ts`` and returns the final state and, when ``keep``, every visited state (the first
    included). ``simulate`` and ``simulate_trajectory`` are the two uses of it."""

    adaptive: ClassVar[bool] = False

    def walk(
        self,
        dynamics: ODE,
        x: Tensor,
        steps: int,
        advance: Callable[[ODE, int, Tensor], Tensor],
        keep: bool,
        progress: Progress | None,
    ) -> tuple[Tensor, list[Tensor]]:
        """The grid bookkeeping: ``x = advance(counting, i, x)`` for each step ``i < steps`` (from grid
        time ``i`` to ``i + 1``; ``counting`` is :func:`counted` ``dynamics``), then the path's
        projection where the dynamics project, the visited state kept when ``keep`` (the first
        included), ``progress(i + 1, steps)``; sets ``last_nfe``. Returns ``(x_final, states)``."""
        counting = counted(dynamics)
        projects = counting.projects
        states = [x] if keep else []
        for i in range(steps):
            x = advance(counting, i, x)
            if projects:
                x = counting.project(x)
            if keep:
                states.append(x)
            if progress is not None:
                progress(i + 1, steps)
        self.last_nfe = counting.count
        return x, states

    @abc.abstractmethod
    def _run(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None,
        keep: bool,
        progress: Progress | None,
    ) -> tuple[Tensor, list[Tensor]]:
        """``(x_final (B, *D), states)``: ``states`` the ``T + 1`` visited ``(B, *D)`` when ``keep``."""

    def simulate(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """Integrate ``x (B, *D)`` over the grid ``ts (T + 1,)``; returns the final ``(B, *D)``."""
        return self._run(dynamics, x, ts, generator, keep=False, progress=progress)[0]

    def simulate_trajectory(
        self, dynamics: ODE, x: Tensor, ts: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Every visited state, ``(T + 1, B, *D)``."""
        return torch.stack(self._run(dynamics, x, ts, generator, keep=True, progress=None)[1])


class FixedStepSimulator(GridSimulator):
    """A simulator that advances exactly between consecutive grid times: implement :meth:`step`.

    ``simulate`` calls ``step`` once per interval of ``ts``, reports ``progress(i, T)`` after step
    ``i`` and sets ``last_nfe``. Capturable as a CUDA graph as long as ``step`` is (no host sync).
    """

    capturable: ClassVar[bool] = True

    @abc.abstractmethod
    def step(
        self, dynamics: ODE, x: Tensor, t: Tensor, h: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Advance ``x (B, *D)`` from time ``t (B,)`` by ``h (B,)``; returns a new ``(B, *D)``."""

    def _run(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None,
        keep: bool,
        progress: Progress | None,
    ) -> tuple[Tensor, list[Tensor]]:
        self.check(dynamics)
        ts = ts.to(device=x.device, dtype=x.dtype)
        batch = x.shape[0]

        def advance(counting: ODE, i: int, x: Tensor) -> Tensor:
            t = ts[i].expand(batch)
            h = (ts[i + 1] - ts[i]).expand(batch)
            return self.step(counting, x, t, h, generator)

        return self.walk(dynamics, x, ts.numel() - 1, advance, keep, progress)
