"""CFG++ (Chung et al. 2025, arXiv 2406.08070; CFGpp-diffusion/CFGpp) in its flow form: ``cfg++``.

CFG++'s DDIM step denoises with the guided prediction at ``lambda in [0, 1]`` but renoises with the
unconditional one. For a Gaussian path ``x = alpha_t z + beta_t eps`` and a velocity model, one step
from grid time ``t`` to the next one ``t'`` is

    x' = alpha_t' z_hat(v_lambda) + beta_t' eps_hat(v_uncond),    v_lambda = v_u + lambda (v_c - v_u),

with ``z_hat`` and ``eps_hat`` the data and noise the velocity predicts at ``(x, t)``. The guider
returns the velocity that makes an Euler step of ``t' - t`` land there, ``(x' - x) / (t' - t)``: with
``euler`` the sampler is exactly CFG++. On the OT path it is classifier-free guidance at a scale that
grows with the step's resolution, ``v_u + lambda (1 - t) t' / (t' - t) (v_c - v_u)`` (docs/math.md).
"""

from __future__ import annotations

from typing import Any, cast

import attrs
import torch
from torch import Tensor

from flowkit.errors import CapabilityError
from flowkit.interfaces import BuildContext, GaussianProbabilityPath, Guider, GuiderParams
from flowkit.params import param


class CFGPlusPlus(Guider):
    """CFG++ for a velocity model on a Gaussian path, stepping over the ``[sample]`` grid (a fixed-step
    simulator; exactly the paper's sampler with ``euler``). At an evaluation after the grid's last
    interior time (Heun's last corrector), the guided ``v_lambda``."""

    @attrs.define(frozen=True)
    class Params(GuiderParams):
        lam: float = param(
            0.6,
            doc="lambda in [0, 1]: weight of the conditional field in the data prediction (0: the "
            "unconditional sampler; the paper: 0.2 to 0.8).",
            validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)],
        )

    def __init__(self, params: CFGPlusPlus.Params | None = None, *, path: GaussianProbabilityPath) -> None:
        super().__init__(params)
        self.path = path
        self._grid: Tensor | None = None
        self._on: dict[tuple[Any, Any], Tensor] = {}

    @classmethod
    def from_params(cls, params: CFGPlusPlus.Params, context: BuildContext) -> CFGPlusPlus:
        """Take the pipeline's Gaussian path; refuse a score-trained model."""
        path = context.path
        if not isinstance(path, GaussianProbabilityPath):
            name = getattr(path, "registered_name", None) or type(path).__name__
            raise CapabilityError(
                f"guider 'cfg++' renoises along a Gaussian path, but [path] is '{name}'; use "
                '[path] kind = "gaussian" or another guider'
            )
        if context.loss is not None and context.loss.trains != "velocity":
            raise CapabilityError(
                f"guider 'cfg++' combines velocities, but loss '{context.loss.registered_name}' trains a "
                f"{context.loss.trains}; train a velocity (cfm) or use another guider"
            )
        return cls(params, path=path)

    def prepare(self, times: Tensor | None) -> None:
        """Keep the ``[sample]`` grid: each step goes to its next time (adaptive simulators refused)."""
        if times is None:
            raise CapabilityError(
                "cfg++ steps from one time of the [sample] grid to the next, which an adaptive simulator "
                'does not follow; use a fixed-step simulator (e.g. simulator = "euler")'
            )
        self._grid, self._on = times, {}

    def _times(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._on:  # copied once per device and dtype, before any captured replay
            self._on[key] = cast(Tensor, self._grid).to(device=like.device, dtype=like.dtype)
        return self._on[key]

    def combine(self, cond: Tensor, uncond: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``(alpha_t' z_hat(v_lambda) + beta_t' eps_hat(v_u) - x) / (t' - t)``; ``(B, *D)``."""
        if self._grid is None:
            raise CapabilityError("guider 'cfg++' was used before prepare() gave it the [sample] grid")
        v_lam = uncond + self.params.lam * (cond - uncond)
        grid = self._times(t)
        t_next = grid[torch.searchsorted(grid, t.contiguous(), right=True).clamp(max=len(grid) - 1)]
        last = t_next <= t  # no later grid time: the guided v_lambda itself
        schedule = self.path.schedule
        c = schedule.coefficients(t).broadcast(x)
        n = schedule.coefficients(t_next).broadcast(x)
        denominator = c.d_alpha * c.beta - c.alpha * c.d_beta
        data = (v_lam * c.beta - x * c.d_beta) / denominator
        noise = (x * c.d_alpha - uncond * c.alpha) / denominator
        step = torch.where(last, torch.ones_like(t), t_next - t).reshape((-1,) + (1,) * (x.dim() - 1))
        velocity = (n.alpha * data + n.beta * noise - x) / step
        return torch.where(last.reshape(step.shape), v_lam, velocity)
