"""The shortcut-model loss (Frans et al. 2024, arXiv 2410.12557; kvfrans/shortcut-models) in flowkit's
time convention (``docs/math.md``, "Shortcut models"): noise at ``t = 0``, data at ``t = 1``.

A shortcut model ``s(x_t, t, d)`` is the step that carries ``x_t`` to ``x_{t+d}`` in one jump,
``x_{t+d} = x_t + d s(x_t, t, d)``. flowkit gives it the two-time network of MeanFlow: the second time
is the end of the step, ``r = t + d``, so ``s(x, t, d) = u(x, t, t + d)`` and the same model samples
with the dynamics ``mean-flow`` and the simulator ``mean-flow-jump``; ``d = 0`` (``r = t``) is the
instantaneous velocity, trained by plain flow matching.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    Loss,
    LossValue,
    ProbabilityPath,
    TimeDistribution,
    call_network,
    network_inputs,
    per_sample,
)
from flowkit.params import component, param
from flowkit_flowmaps.meanflow import AVERAGE_VELOCITY, AverageVelocity, InstantVelocity, draw_times


def _power_of_two(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1 or value & (value - 1):
        raise ValueError(f"{attribute.name} must be a power of two (1, 2, 4, ..., 128), got {value}")


@torch.no_grad()
def two_half_steps(
    network: nn.Module, x: Tensor, t: Tensor, h: Tensor, label: Tensor, y: Tensor | None = None
) -> Tensor:
    """``(s(x, t, label) + s(x', t + h, label)) / 2`` with ``x' = x + h s(x, t, label)``: two Euler
    half steps of length ``h (B,)`` with the model at step size ``label (B,)`` (``h`` itself, or ``0``
    for the instantaneous velocity at the smallest step); no gradient flows through it."""
    first = call_network(network, x, t, r=t + label, y=y)
    x_mid = torch.addcmul(x, per_sample(h, x), first)
    second = call_network(network, x_mid, t + h, r=t + h + label, y=y)
    return (first + second) / 2


class ShortcutLoss(Loss):
    """Flow matching at ``d = 0`` and self-consistency at ``d > 0``: ``E ||s(x_t, t, d) - target||^2``.

    A share ``consistency`` of each batch (its first rows) trains steps ``d = span / 2^k`` (``span``
    the path's ``t_range`` length, ``k`` uniform in ``0 .. log2(max_steps)``), each at a time ``t``
    on the grid of its own step (``t + d`` stays in the range), on the target of two half steps of
    the model with a stopped gradient (:func:`two_half_steps`; at the smallest step
    ``d = span / max_steps`` the half steps use ``s(., ., 0)``, the instantaneous velocity). The rest
    trains ``d = 0`` on the path's velocity (plain flow matching at times drawn by ``time``). The
    mean squared error (mean over dims, then over the whole batch) is the loss; each part is logged,
    ``loss/flow`` and ``loss/consistency``.

    The network takes the end of the step as its second time, ``r = t + d`` (``[model] second_time =
    true``); the trained model offers ``velocity`` ``s(x, t, 0)`` and ``average-velocity``
    ``u(x, t, r) = s(x, t, r - t)``, sampled by ``mean-flow-jump`` with dynamics ``mean-flow``.
    """

    trains = "velocity"

    @attrs.define(frozen=True)
    class Params:
        time: TimeDistribution = component(
            "uniform",
            doc="Distribution of the flow-matching times (d = 0) on the path's t_range (kind time).",
        )
        consistency: float = param(
            0.25,
            doc="Share of each batch trained on self-consistency targets (d > 0); the rest d = 0.",
            validator=[attrs.validators.ge(0), attrs.validators.le(1)],
        )
        max_steps: int = param(
            128,
            doc="The finest step grid, a power of two: steps d = t_range / 2^k for 2^k <= max_steps.",
            validator=_power_of_two,
        )

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        """The network as the velocity ``s(x, t, 0)``; refuses a network without a second time."""
        declared = network_inputs(network)
        if "r" not in declared:
            name = getattr(network, "registered_name", None) or type(network).__name__
            raise CapabilityError(
                f"loss 'shortcut' trains a step-size-conditioned network s(x, t, d) as u(x, t, r = t + d), "
                f"but network '{name}' takes no second time r (inputs: {', '.join(declared) or 'none'}); "
                "set [model] second_time = true"
            )
        return InstantVelocity(network)

    def roles(self, network: nn.Module, path: ProbabilityPath) -> dict[str, nn.Module]:
        """``velocity`` (``s(x, t, 0)``) and ``average-velocity`` (``s(x, t, r - t)``)."""
        return {"velocity": self.model_role(network, path), AVERAGE_VELOCITY: AverageVelocity(network)}

    def consistency_rows(self, n: int) -> int:
        """How many of ``n`` rows train self-consistency (the first ones)."""
        return round(self.params.consistency * n)

    def sample_steps(
        self,
        n: int,
        path: ProbabilityPath,
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, d, half)`` of ``n`` self-consistency rows, each ``(n,)``: a level ``k`` uniform in
        ``0 .. log2(max_steps)``, ``d = span / 2^k``, ``t = lo + i d`` with ``i`` uniform in
        ``0 .. 2^k - 1``, and the step size the half steps evaluate at (``d / 2``, or ``0`` at the
        smallest step)."""
        levels = self.params.max_steps.bit_length()  # log2(max_steps) + 1
        k = torch.randint(0, levels, (n,), generator=generator, device=device)
        sections = torch.pow(2, k)
        i = torch.floor(torch.rand((n,), generator=generator, device=device, dtype=dtype) * sections)
        lo, hi = path.t_range
        d = (hi - lo) / sections.to(dtype)
        half = torch.where(sections == self.params.max_steps, torch.zeros_like(d), d / 2)
        return lo + i * d, d, half

    def flow_times(
        self,
        n: int,
        path: ProbabilityPath,
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """``n`` flow-matching times on ``path.t_range`` drawn by ``time``."""
        u = draw_times(self.params.time, "time", n, generator, device, dtype)
        lo, hi = path.t_range
        return lo + (hi - lo) * u

    def __call__(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> LossValue:
        """The loss on data ``z (B, *D)``; draws the flow times, the steps, then the noise from
        ``generator``."""
        n = z.shape[0]
        m = self.consistency_rows(n)
        kw = {"generator": generator, "device": z.device, "dtype": z.dtype}
        flow_t = self.flow_times(n - m, path, **kw)  # type: ignore[arg-type]
        step_t, d, half = self.sample_steps(m, path, **kw)  # type: ignore[arg-type]
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        t = torch.cat([step_t, flow_t])
        d_all = torch.cat([d, torch.zeros_like(flow_t)])
        half_all = torch.cat([half, torch.zeros_like(flow_t)])
        return self.loss_at(model, path, z, t, d_all, half_all, noise, m, generator, y=y)

    def loss_at(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        t: Tensor,
        d: Tensor,
        half: Tensor,
        noise: Tensor,
        m: int,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> LossValue:
        """The loss at given times ``t``, steps ``d`` and half-step sizes ``half`` (each ``(B,)``) and
        noise ``(B, *D)``; the first ``m`` rows are self-consistency rows, the rest flow matching."""
        network = model.network if isinstance(model, (InstantVelocity, AverageVelocity)) else model
        x, v = path.sample_with_target(z, t, noise, generator)
        target = v
        if m > 0:
            y_c = None if y is None else y[:m]
            bootstrap = two_half_steps(network, x[:m], t[:m], d[:m] / 2, half[:m], y_c)
            target = torch.cat([bootstrap, v[m:]])
        s = call_network(network, x, t, r=t + d, y=y)
        error = (s - target.detach()).pow(2).flatten(1).mean(1)  # (B,)
        scalars = {}
        if m > 0:
            scalars["consistency"] = error[:m].mean().detach()
        if m < error.shape[0]:
            scalars["flow"] = error[m:].mean().detach()
        return LossValue(error.mean(), scalars)
