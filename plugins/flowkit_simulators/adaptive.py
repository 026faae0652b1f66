"""Adaptive simulators: ``dopri5``, the Dormand–Prince 5(4) pair with error control (``docs/math.md``,
"Adaptive solving").

The simulator chooses its own steps. It integrates from ``ts[0]`` to ``ts[-1]`` and lands exactly on
every time of ``ts`` (a step that would pass the next output time is shortened to end on it), so
``simulate_trajectory`` returns the solution at the grid times. The step size is shared by the whole
batch: a step is accepted when the error norm of the worst sample is at most 1. Reading that norm on
the host each step is why the simulator is not capturable as a CUDA graph.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar

import attrs
import torch
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import ODE, Progress, Simulator
from flowkit.params import param
from flowkit.solvers import counted

# The Dormand–Prince tableau (Hairer, Nørsett & Wanner, Solving ODEs I, Table II.5.2).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# The 5th-order weights are the last row of A (FSAL: the 7th stage is the drift at the new state).
# Error weights: b5 - b4, with b4 = (5179/57600, 0, 7571/16695, 393/640, -92097/339200, 187/2100, 1/40).
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
#: Consecutive non-finite trial steps (each shrinking the step by ``min_factor``) before giving up.
_NONFINITE_RETRIES = 10


def _positive(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


class Dopri5Simulator(Simulator):
    """Dormand–Prince 5(4) with step-size control, for ODEs; advances with the 5th-order solution.

    Error norm of a trial step: for each sample the RMS over its dimensions of
    ``err / (atol + rtol * max(|x|, |x_new|))``, with ``err`` the difference of the embedded 5th- and
    4th-order solutions; the step (one size for the whole batch) is accepted when the largest norm of
    the batch is ``<= 1``. The next step is ``h * min(max_factor, max(min_factor, safety * err^(-1/5)))``
    (no growth right after a rejection). The first step is Hairer's starting step (Solving ODEs I,
    II.4) unless ``first_step`` gives one.

    FSAL (first same as last): the 7th stage of an accepted step is the drift at the new state and is
    the first stage of the next, so every trial step costs 6 drift evaluations, plus 1 for the drift
    at the start and 1 for the automatic first step: ``last_nfe = 6 * (accepted + rejected) + 1``
    (``+ 1`` more when ``first_step = 0``). ``last_accepted`` and ``last_rejected`` hold the counts.

    Raises :class:`~flowkit.errors.FlowkitError` when ``max_steps`` trial steps do not reach the end,
    and when the state or the drift becomes non-finite.
    """

    adaptive: ClassVar[bool] = True
    capturable: ClassVar[bool] = False
    solves: ClassVar[type] = ODE

    @attrs.define(frozen=True)
    class Params:
        rtol: float = param(1e-5, doc="Relative tolerance of the local error per step.", validator=_positive)
        atol: float = param(1e-5, doc="Absolute tolerance of the local error per step.", validator=_positive)
        max_steps: int = param(
            10_000, doc="Most trial steps (accepted + rejected) of one call.", validator=_positive
        )
        first_step: float = param(
            0.0,
            doc="Size of the first step; 0 chooses it automatically (Hairer's starting step).",
            validator=attrs.validators.ge(0),
        )
        safety: float = param(
            0.9,
            doc="Safety factor on the optimal step size.",
            validator=[attrs.validators.gt(0), attrs.validators.le(1)],
        )
        min_factor: float = param(
            0.2,
            doc="Smallest factor by which one step may shrink the next.",
            validator=[attrs.validators.gt(0), attrs.validators.lt(1)],
        )
        max_factor: float = param(
            10.0, doc="Largest factor by which one step may grow the next.", validator=attrs.validators.gt(1)
        )

    last_accepted: int = 0
    last_rejected: int = 0

    # -----------------------------------------------------------------------------------------------

    def _name(self) -> str:
        return self.registered_name or "dopri5"

    def _norms(self, err: Tensor, x: Tensor, x_new: Tensor | None = None) -> Tensor:
        """Per-sample RMS of ``err / (atol + rtol * max(|x|, |x_new|))``, shape ``(B,)``."""
        p = self.params
        size = x.abs() if x_new is None else torch.maximum(x.abs(), x_new.abs())
        scaled = err / (p.atol + p.rtol * size)
        return scaled.reshape(scaled.shape[0], -1).square().mean(dim=1).sqrt()

    def _norm(self, err: Tensor, x: Tensor, x_new: Tensor | None = None) -> float:
        """The largest per-sample norm of the batch, read on the host."""
        return float(self._norms(err, x, x_new).max().item())

    def _first_step(self, drift, x: Tensor, t: float, k1: Tensor, span: float) -> float:
        """Hairer's starting step size (Solving ODEs I, II.4) for an order-5 method."""
        d0, d1 = self._norm(x, x), self._norm(k1, x)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, span)
        k = drift(x + h0 * k1, t + h0)
        d2 = self._norm(k - k1, x) / h0
        if not math.isfinite(d2):
            return h0
        largest = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if largest <= 1e-15 else (0.01 / largest) ** (1.0 / 5.0)
        return min(100.0 * h0, h1, span)

    def _run(
        self, dynamics: ODE, x: Tensor, ts: Tensor, keep: bool, progress: Progress | None
    ) -> tuple[Tensor, list[Tensor]]:
        self.check(dynamics)
        p = self.params
        counting = counted(dynamics)
        projects = counting.projects
        batch = x.shape[0]
        times = [float(v) for v in ts.detach().to(device="cpu", dtype=torch.float64).tolist()]
        if any(b < a for a, b in itertools.pairwise(times)):
            raise FlowkitError(f"simulator '{self._name()}' needs increasing times ts, got {times}")
        self.last_nfe = self.last_accepted = self.last_rejected = 0
        states = [x] if keep else []
        if len(times) < 2:
            return x, states

        def drift(state: Tensor, time: float) -> Tensor:
            return counting.drift(state, state.new_full((batch,), time))

        t0, t_end = times[0], times[-1]
        span = t_end - t0
        t = t0
        k1 = drift(x, t)
        if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(k1).all())):
            self.last_nfe = counting.count
            raise FlowkitError(
                f"simulator '{self._name()}': the state or its drift is not finite at the start "
                f"t = {t:.6g}; check the prior and the dynamics"
            )
        h = p.first_step if p.first_step > 0 else (self._first_step(drift, x, t, k1, span) if span > 0 else 0)
        trials = nonfinite = 0
        rejected_last = False
        for target in times[1:]:
            while t < target:
                if trials >= p.max_steps:
                    self.last_nfe = counting.count
                    raise FlowkitError(
                        f"simulator '{self._name()}' reached max_steps = {p.max_steps} at t = {t:.6g} "
                        f"(integrating from {t0:.6g} to {t_end:.6g}) with rtol = {p.rtol:g}, "
                        f"atol = {p.atol:g}; raise max_steps or loosen rtol/atol"
                    )
                trials += 1
                hit = t + h >= target
                step = target - t if hit else h
                if t + step == t:
                    self.last_nfe = counting.count
                    raise FlowkitError(
                        f"simulator '{self._name()}': the step size underflowed at t = {t:.6g}; the "
                        f"dynamics may be singular there, or rtol/atol too tight for {x.dtype}"
                    )
                ks = [k1]
                for i in range(1, 7):
                    stage = x
                    for a, k in zip(_A[i], ks, strict=True):
                        if a != 0.0:
                            stage = stage + (step * a) * k
                    ks.append(drift(stage, t + _C[i] * step))
                x_new = stage  # the last stage's state is the 5th-order solution
                err = ks[0] * (step * _E[0])
                for e, k in zip(_E[1:], ks[1:], strict=True):
                    if e != 0.0:
                        err = err + (step * e) * k
                norm = self._norm(err, x, x_new)
                if not math.isfinite(norm):
                    nonfinite += 1
                    if nonfinite > _NONFINITE_RETRIES:
                        self.last_nfe = counting.count
                        raise FlowkitError(
                            f"simulator '{self._name()}': the state became non-finite at t = {t:.6g} "
                            f"even with steps of {step:.3g}; check the dynamics (a singular field?) "
                            f"and the time range"
                        )
                    self.last_rejected += 1
                    h = step * p.min_factor
                    rejected_last = True
                    continue
                nonfinite = 0
                grow = 1.0 if rejected_last else p.max_factor
                factor = grow if norm == 0 else min(grow, max(p.min_factor, p.safety * norm**-0.2))
                if norm <= 1.0:
                    self.last_accepted += 1
                    t = target if hit else t + step
                    x, k1 = x_new, ks[6]
                    if projects:  # the path's projection; the drift at the projected state anew
                        x = counting.project(x)
                        k1 = drift(x, t)
                    rejected_last = False
                    if progress is not None:
                        progress(min(1000, round(1000 * (t - t0) / span)), 1000)
                else:
                    self.last_rejected += 1
                    rejected_last = True
                h = step * factor
            if keep:
                states.append(x)
        self.last_nfe = counting.count
        return x, states

    def simulate(
        self,
        dynamics: ODE,
        x: Tensor,
        ts: Tensor,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> Tensor:
        """Integrate ``x (B, *D)`` from ``ts[0]`` to ``ts[-1]``; returns the final ``(B, *D)``.

        ``progress(done, 1000)`` reports the thousandths of the time span done. ``generator`` is unused
        (an ODE draws no noise)."""
        return self._run(dynamics, x, ts, keep=False, progress=progress)[0]

    def simulate_trajectory(
        self, dynamics: ODE, x: Tensor, ts: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """The solution at every time of ``ts (T + 1,)``, ``(T + 1, B, *D)``."""
        return torch.stack(self._run(dynamics, x, ts, keep=True, progress=None)[1])
