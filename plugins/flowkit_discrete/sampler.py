"""Sampling a discrete model: the dynamics ``ctmc`` (a continuous-time Markov chain whose rates come from
the posterior) and the simulator ``discrete-euler`` (``docs/math.md``, "The discrete sampler").

On a step from ``t`` to ``t + h`` every token of ``x`` independently draws a candidate ``y`` from the
posterior ``q = p_{1|t}(. | x)`` and jumps to it, where ``y != x``, with probability
``1 - exp(-h c S)``, ``c = kappa'_t / (1 - kappa_t)``, ``S = sum_y q(y)``: the CTMC with rates
``u_t(y | x) = c q(y)`` held constant over the step (``S = 1`` for a posterior; a guided one need not
sum to one). The last step draws ``x_1 ~ q`` outright. This is the law of the flow_matching library's
``MixtureDiscreteEulerSolver`` (which draws ``x_1`` first and jumps to it at rate ``c``), with the
same random draws in the same order for an unguided model, less its second draw of a one-hot target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import ODE, BuildContext, Progress, Simulator
from flowkit.solvers import GridSimulator
from flowkit_discrete.losses import POSTERIOR, Posterior
from flowkit_discrete.path import MixturePath

LogPosterior = Callable[..., Tensor]


class CTMCDynamics(ODE):
    """The jump process of a mixture path: ``posterior(x (B, *D), t (B,)) -> (B, *D, V)``, the model's
    log-posterior (one network evaluation), and ``jump_coefficient(t)``, the path's
    ``kappa'_t / (1 - kappa_t)``. ``normalised`` is ``False`` for a posterior that need not sum to one
    (a guided combination), whose total mass then scales the rate of jumping. It has no drift: only
    ``discrete-euler`` samples it. Tests pass the parts directly: ``CTMCDynamics(posterior=f, path=p)``."""

    needs = frozenset({POSTERIOR})
    evaluations = frozenset({"posterior"})

    def __init__(
        self,
        params: Any = None,
        *,
        posterior: LogPosterior | None = None,
        path: MixturePath | None = None,
        normalised: bool = True,
    ) -> None:
        super().__init__(params)
        self._posterior, self.path, self.normalised = posterior, path, normalised

    @classmethod
    def from_params(cls, params: Any, context: BuildContext) -> CTMCDynamics:
        """Take the posterior from the model's roles and the rates from the mixture path."""
        role = context.roles.get(POSTERIOR)
        if role is None:
            have = ", ".join(sorted(context.roles)) or "nothing"
            raise CapabilityError(
                f"dynamics 'ctmc' needs the posterior of a discrete model, but the model provides {have}; "
                'train it with [loss] kind = "cross-entropy" or "generalized-kl"'
            )
        if not isinstance(context.path, MixturePath):
            name = context.path.display_name if context.path is not None else "(none)"
            raise CapabilityError(
                f"dynamics 'ctmc' needs [path] kind = \"mixture\", but the path is '{name}'"
            )
        # anything but the loss's own role (a guided combination) may not sum to one
        return cls(params, posterior=role, path=context.path, normalised=isinstance(role, Posterior))

    def check_simulator(self, simulator: Simulator) -> None:
        if not isinstance(simulator, DiscreteEuler):
            raise CapabilityError(
                f"dynamics 'ctmc' is a jump process, which simulator '{simulator.display_name}' cannot "
                'integrate (it follows a drift); use simulator = "discrete-euler"'
            )

    def posterior(self, x: Tensor, t: Tensor) -> Tensor:
        """``log p_{1|t}(. | x)`` at tokens ``x (B, *D)`` and ``t (B,)``: ``(B, *D, V)``."""
        if self._posterior is None:
            raise CapabilityError(
                "dynamics 'ctmc' was built without a posterior; build it through a pipeline or pass "
                "posterior=my_module"
            )
        return self._posterior(x, t)

    def jump_coefficient(self, t: Tensor) -> Tensor:
        """``kappa'_t / (1 - kappa_t)`` of the path."""
        if self.path is None:
            raise CapabilityError("dynamics 'ctmc' was built without its mixture path; pass path=...")
        return self.path.jump_coefficient(t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        raise CapabilityError(
            "dynamics 'ctmc' is a jump process and has no drift; sample it with "
            'simulator = "discrete-euler"'
        )


class DiscreteEuler(GridSimulator):
    """The Euler sampler of a CTMC over the ``[sample]`` grid, one posterior evaluation per step
    (``last_nfe = steps``); tokens stay int64. See the module's docstring for the step."""

    capturable: ClassVar[bool] = False  # its draws' shapes depend on no data, but multinomial syncs

    def check(self, dynamics: ODE) -> None:
        super().check(dynamics)
        if not isinstance(dynamics, CTMCDynamics):
            raise CapabilityError(
                f"simulator 'discrete-euler' samples jump processes, but dynamics '{dynamics.display_name}' "
                'is not one; use dynamics = "ctmc" (a model trained by "cross-entropy" or "generalized-kl")'
            )

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
        assert isinstance(dynamics, CTMCDynamics)
        if x.is_floating_point():
            raise CapabilityError(
                f"simulator 'discrete-euler' moves int64 tokens, but the state is {x.dtype}"
            )
        ts = ts.to(device=x.device, dtype=torch.float32)
        steps, batch, normalised = ts.numel() - 1, x.shape[0], dynamics.normalised

        def advance(counting: ODE, i: int, x: Tensor) -> Tensor:
            t = ts[i : i + 1]
            log_q = counting.posterior(x, t.expand(batch))  # type: ignore[attr-defined]
            q = log_q.exp()
            drawn = torch.multinomial(q.reshape(-1, q.shape[-1]), 1, replacement=True, generator=generator)
            drawn = drawn.view(x.shape)
            if i == steps - 1:
                return drawn
            h = ts[i + 1 : i + 2] - t
            rate = dynamics.jump_coefficient(t)
            if not normalised:
                rate = rate * q.sum(dim=-1)
            jump = torch.rand(x.shape, generator=generator, device=x.device) < 1 - torch.exp(-h * rate)
            return torch.where(jump & (drawn != x), drawn, x)

        return self.walk(dynamics, x.clone(), steps, advance, keep, progress)
