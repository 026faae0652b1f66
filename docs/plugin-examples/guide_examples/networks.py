"""A network: a small residual MLP on ``[flatten(x), t]``."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from flowkit.interfaces import BuildContext, Network
from flowkit.params import param


class ResidualMLP(Network):
    """``forward(x (B, *D), t (B,)) -> (B, *D)``: ``h = W_in [x, t]``, then ``blocks`` times
    ``h <- h + W_2 silu(W_1 silu(h))``, and ``W_out h`` reshaped to ``(B, *D)``."""

    @attrs.define(frozen=True)
    class Params:
        width: int = param(64, doc="Width of the hidden layers.", validator=attrs.validators.gt(0))
        blocks: int = param(2, doc="Number of residual blocks.", validator=attrs.validators.ge(0))

    def __init__(self, params: ResidualMLP.Params, data_shape: tuple[int, ...]) -> None:
        super().__init__(params)
        self.data_shape, dim, width = data_shape, math.prod(data_shape), params.width
        self.inp = nn.Linear(dim + 1, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(params.blocks)
        )
        self.out = nn.Linear(width, dim)

    @classmethod
    def from_params(cls, params: ResidualMLP.Params, context: BuildContext) -> ResidualMLP:
        return cls(params, data_shape=context.data_shape)  # the event shape D of the [data]

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.inp(torch.cat([x.flatten(1), t.to(x.dtype)[:, None]], dim=1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).view(x.shape)
