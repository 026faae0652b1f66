"""A multilayer perceptron backbone ``(x, t) -> (B, *D)`` for 2D and tabular data."""

from __future__ import annotations

import itertools
import math
from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Network
from flowkit.params import param

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def _check_hidden(instance: object, attribute: attrs.Attribute, value: list[int]) -> None:
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"hidden must list at least one layer width, e.g. [256, 256, 256]; got {value!r}")
    for width in value:
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"hidden must hold positive int layer widths; got {value!r}")


class MLP(Network):
    """``forward(x (B, *D), t (B,)) -> (B, *D)``: a plain MLP on ``[flatten(x), time features]``.

    The input is the flattened ``x`` concatenated with ``t`` (``time_features = 0``) or with ``t`` and
    ``2 * time_features`` Fourier features ``sin(pi 2^k t), cos(pi 2^k t)``, ``k = 0..time_features-1``
    (frequencies doubling from one half period over ``[0, 1]``). Layers: ``Linear`` and the activation
    for each width in ``hidden``, then a ``Linear`` back to ``prod(D)``, reshaped to ``(B, *D)``.
    The parameter count is ``sum(in * out + out)`` over those linear layers, with
    ``in = prod(D) + 1 + 2 * time_features`` for the first.
    """

    @attrs.define(frozen=True)
    class Params:
        hidden: list[int] = param(
            factory=lambda: [256, 256, 256],
            validator=_check_hidden,
            doc="Widths of the hidden layers (their number is the depth).",
        )
        activation: Literal["silu", "relu", "gelu", "tanh"] = param(
            "silu",
            doc="Activation after each hidden layer.",
            validator=attrs.validators.in_(tuple(ACTIVATIONS)),
        )
        time_features: int = param(
            0,
            doc="Fourier frequencies of t fed in besides t (0: plain t; at most 32: beyond, pi 2^k t "
            "overflows float32).",
            validator=[attrs.validators.ge(0), attrs.validators.le(32)],
        )

    def __init__(self, params: Params | None = None, *, data_shape: tuple[int, ...]) -> None:
        super().__init__(params)
        shape = tuple(int(size) for size in data_shape)
        if not shape or any(size <= 0 for size in shape):
            raise FlowkitError(f"mlp needs a non-empty event shape of positive sizes, got {data_shape!r}")
        self.data_shape = shape
        dim = math.prod(shape)
        p = self.params
        if p.time_features > 0:
            self.register_buffer(
                "frequencies",
                math.pi * 2.0 ** torch.arange(p.time_features, dtype=torch.float32),
                persistent=False,
            )
        else:
            self.frequencies = None
        widths = [dim + 1 + 2 * p.time_features, *p.hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), ACTIVATIONS[p.activation]()]
        layers.append(nn.Linear(widths[-1], dim))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> MLP:
        """Build for the data's event shape ``context.data_shape``."""
        return cls(params, data_shape=context.data_shape)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x (B, *D)``, ``t (B,)`` -> ``(B, *D)``."""
        t = t.to(x.dtype)[:, None]
        if self.frequencies is None:
            inputs = torch.cat([x.reshape(x.shape[0], -1), t], dim=1)
        else:
            angles = t * self.frequencies.to(x.dtype)
            inputs = torch.cat([x.reshape(x.shape[0], -1), t, torch.sin(angles), torch.cos(angles)], dim=1)
        return self.net(inputs).reshape(x.shape)
