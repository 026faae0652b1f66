"""The MeanFlow loss (Geng et al. 2025, arXiv 2505.13447) in flowkit's time convention (``docs/math.md``,
"MeanFlow"): noise at ``t = 0``, data at ``t = 1``, and a two-time network ``u(x, t, r)`` evaluated at
the state ``x`` of time ``t``, predicting the average velocity over ``[t, r]`` (``r >= t``, towards the
data), so that ``x_r = x_t + (r - t) u(x_t, t, r)`` on the trajectories of the flow.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import (
    Loss,
    LossValue,
    ProbabilityPath,
    TimeDistribution,
    VectorField,
    call_network,
    network_inputs,
    per_sample,
)
from flowkit.params import component, param

#: The role under which a MeanFlow model offers its average velocity ``u(x, t, r)``, beside ``velocity``.
AVERAGE_VELOCITY = "average-velocity"


class InstantVelocity(VectorField):
    """A two-time network as the velocity: ``v(x, t) = u(x, t, r = t)``, the average over an empty
    interval (what ODE simulators, guidance and the likelihood use)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        return call_network(self.network, x, t, r=t, **inputs)


class AverageVelocity(nn.Module):
    """A two-time network as the average velocity: ``forward(x (B, *D), t (B,), r (B,), **inputs)``
    is ``u(x, t, r) = (x_r - x_t) / (r - t)`` for ``x = x_t`` on a trajectory of the flow."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor, t: Tensor, r: Tensor, **inputs: Tensor) -> Tensor:
        return call_network(self.network, x, t, r=r, **inputs)


def meanflow_target(
    network: nn.Module, x: Tensor, t: Tensor, r: Tensor, v: Tensor, y: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(u, target)`` at ``x (B, *D)``, ``t (B,)``, ``r (B,)`` with the path's velocity ``v (B, *D)``:
    ``u = u(x, t, r)`` (differentiable) and the detached MeanFlow target
    ``v + (r - t) du/dt``, where ``du/dt = (d_x u) v + d_t u`` is the derivative along the flow with
    ``r`` held fixed: one forward-mode product with the tangents ``(v, 1, 0)`` of ``(x, t, r)``."""

    def average(x: Tensor, t: Tensor, r: Tensor) -> Tensor:
        return call_network(network, x, t, r=r, y=y)

    derivative = torch.func.jvp(average, (x, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    u, du_dt = derivative[0], derivative[1]  # (no auxiliary output)
    return u, (v + per_sample(r - t, x) * du_dt).detach()


class MeanFlowLoss(Loss):
    """``E w ||u(x_t, t, r) - sg(v + (r - t) du/dt)||^2`` (mean over dims), the MeanFlow objective.

    Two times are drawn from ``time`` and mapped onto the path's ``t_range``; ``t`` is the smaller
    (the state's time, nearer the noise), ``r`` the larger, and with probability ``r_equals_t`` the
    pair collapses to ``r = t`` (there the target is the path's velocity: flow matching). ``x_t`` and
    the velocity ``v`` come from ``path.sample_with_target`` (on the OT path ``x_t = (1 - t) x_0 + t z``,
    ``v = z - x_0``). The adaptive weight ``w = sg(1 / (||err||^2 + c)^p)`` (``p = weight_power``,
    ``c = weight_eps``; ``p = 0`` is the plain squared error) tames the heavy tail of the JVP target;
    the unweighted ``||err||^2`` is logged as ``loss/unweighted``.

    The network must take the second time (``inputs`` with ``r``: ``[model] second_time = true``).
    The trained model offers the ``velocity`` ``u(x, t, t)`` (any ODE simulator samples it) and the
    ``average-velocity`` ``u(x, t, r)`` (dynamics ``mean-flow``, simulator ``mean-flow-jump``).
    """

    trains = "velocity"
    forward_mode_ad: ClassVar[bool] = True

    @attrs.define(frozen=True)
    class Params:
        time: TimeDistribution = component(
            "uniform",
            doc="Distribution of each of the two training times on the path's t_range (kind time).",
        )
        end_time: TimeDistribution | None = component(
            None,
            doc="Distribution of the second of the two times, drawn after the first (kind time; default: "
            "time); e.g. logit-normal with a large mean to favour jumps that end near the data.",
        )
        r_equals_t: float = param(
            0.75,
            doc="Share of the batch trained with r = t (plain flow matching); the rest on r > t.",
            validator=[attrs.validators.ge(0), attrs.validators.le(1)],
        )
        weight_power: float = param(
            1.0,
            doc="Power p of the adaptive weight 1 / (||err||^2 + c)^p (0: the plain squared error).",
            validator=attrs.validators.ge(0),
        )
        weight_eps: float = param(
            1e-3,
            doc="Constant c of the adaptive weight 1 / (||err||^2 + c)^p.",
            validator=attrs.validators.gt(0),
        )

    def model_role(self, network: nn.Module, path: ProbabilityPath) -> nn.Module:
        """The network as the velocity ``u(x, t, t)``; refuses a network without a second time."""
        declared = network_inputs(network)
        if "r" not in declared:
            name = getattr(network, "registered_name", None) or type(network).__name__
            raise CapabilityError(
                f"loss 'meanflow' trains a two-time network u(x, t, r), but network '{name}' takes no "
                f"second time r (inputs: {', '.join(declared) or 'none'}); set [model] second_time = true"
            )
        return InstantVelocity(network)

    def roles(self, network: nn.Module, path: ProbabilityPath) -> dict[str, nn.Module]:
        """``velocity`` (``u(x, t, t)``) and ``average-velocity`` (``u(x, t, r)``)."""
        return {"velocity": self.model_role(network, path), AVERAGE_VELOCITY: AverageVelocity(network)}

    def sample_times(
        self,
        n: int,
        path: ProbabilityPath,
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        """``(t, r)``, each ``(n,)`` on ``path.t_range`` with ``t <= r``: a draw of ``time`` and one of
        ``end_time`` (``time`` again where it is unset), sorted, then ``r = t`` where a third, uniform
        draw falls below ``r_equals_t``."""
        a = draw_times(self.params.time, "time", n, generator, device, dtype)
        end = self.params.end_time if self.params.end_time is not None else self.params.time
        b = draw_times(end, "end_time", n, generator, device, dtype)
        lo, hi = path.t_range
        a, b = lo + (hi - lo) * a, lo + (hi - lo) * b
        t, r = torch.minimum(a, b), torch.maximum(a, b)
        same = torch.rand((n,), generator=generator, device=device, dtype=dtype) < self.params.r_equals_t
        return t, torch.where(same, t, r)

    def __call__(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> LossValue:
        """The weighted loss on data ``z (B, *D)`` and its unweighted error (``loss/unweighted``);
        draws ``t, r`` then the noise from ``generator``."""
        t, r = self.sample_times(z.shape[0], path, generator, z.device, z.dtype)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        return self.loss_at(model, path, z, t, r, noise, generator, y=y)

    def loss_at(
        self,
        model: nn.Module,
        path: ProbabilityPath,
        z: Tensor,
        t: Tensor,
        r: Tensor,
        noise: Tensor,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> LossValue:
        """The loss at given times ``t, r (B,)`` and noise ``(B, *D)``."""
        network = model.network if isinstance(model, (InstantVelocity, AverageVelocity)) else model
        x, v = path.sample_with_target(z, t, noise, generator)
        # Where r = t the target is v itself ((r - t) du/dt vanishes): those rows need one plain
        # forward pass, and only the rows with r > t pay for the forward-mode product (a tangent
        # beside every activation). The rows' errors are the same as with the jvp of the whole
        # batch; only their order in the mean differs.
        still, moving = (r == t).nonzero().squeeze(1), (r != t).nonzero().squeeze(1)
        errors = []
        if still.numel():
            u = call_network(network, x[still], t[still], r=t[still], y=_rows(y, still))
            errors.append(_squared_error(u, v[still]))
        if moving.numel():
            picked = (x[moving], t[moving], r[moving], v[moving], _rows(y, moving))
            errors.append(_squared_error(*meanflow_target(network, *picked)))
        error = torch.cat(errors)
        weight = (error.detach() + self.params.weight_eps).pow(-self.params.weight_power)
        return LossValue((weight * error).mean(), {"unweighted": error.mean().detach()})


def _squared_error(u: Tensor, target: Tensor) -> Tensor:
    """``||u - target||^2 / prod(D)`` per row, ``(B,)``."""
    return (u - target).pow(2).flatten(1).mean(1)


def _rows(y: Tensor | None, index: Tensor) -> Tensor | None:
    """The conditioning of the rows ``index`` (``None`` stays ``None``)."""
    return None if y is None else y[index]


def draw_times(
    times: TimeDistribution | str,
    name: str,
    n: int,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """``n`` draws of a time distribution on ``[0, 1]``, ``(n,)``."""
    if isinstance(times, TimeDistribution):
        return times.sample(n, generator, device, dtype)
    if times == "uniform":  # a loss built outside a pipeline holds the default's spec
        return torch.rand((n,), generator=generator, device=device, dtype=dtype)
    raise TypeError(f"{name} must be a built TimeDistribution component or 'uniform', got {times!r}")
