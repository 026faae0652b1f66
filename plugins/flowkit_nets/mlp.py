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
    """``forward(x (B, *D), t (B,)) -> (B, *O)``: a plain MLP on ``[flatten(x), time features]``.

    The input is the flattened ``x`` concatenated with ``t`` (``time_features = 0``) or with ``t`` and
    ``2 * time_features`` Fourier features ``sin(pi 2^k t), cos(pi 2^k t)``, ``k = 0..time_features-1``
    (frequencies doubling from one half period over ``[0, 1]``). Layers: ``Linear`` and the activation
    for each width in ``hidden``, then a ``Linear`` to ``prod(O)``, reshaped to ``(B, *O)``, where
    ``O`` is the loss's output shape (``context.output_shape``: ``D`` for a velocity or a score).
    The parameter count is ``sum(in * out + out)`` over those linear layers, with
    ``in = prod(D) + 1 + 2 * time_features`` for the first.

    With ``class_conditional = true`` on labelled data (``K`` classes) it declares the input ``y``
    (``forward(x, t, y=y)``, ``y (B,)`` int64, ``y = K`` the null class) and appends the one-hot ``y``
    (``K + 1`` values) to the first layer's input.

    With ``second_time = true`` it declares the input ``r`` (``forward(x, t, r=r)``, ``r (B,)``: the
    second time of a two-time model such as MeanFlow's average velocity ``u(x_t, t, r)``) and appends
    the step ``h = r - t`` after the features of ``t``, with the same Fourier features of ``h``
    (``1 + 2 * time_features`` more inputs). ``inputs`` is then ``("r",)``, or ``("r", "y")`` when
    class-conditional too.
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
        class_conditional: bool = param(
            False,
            doc="Condition on the dataset's class labels, where it has them (input y, plus a null "
            "class for guidance).",
        )
        second_time: bool = param(
            False,
            doc="Take a second time r (input r, fed as the step r - t): a two-time network, e.g. "
            "for the meanflow loss.",
        )

    def __init__(
        self,
        params: Params | None = None,
        *,
        data_shape: tuple[int, ...],
        output_shape: tuple[int, ...] | None = None,
        num_classes: int = 0,
    ) -> None:
        super().__init__(params)
        shape = tuple(int(size) for size in data_shape)
        if not shape or any(size <= 0 for size in shape):
            raise FlowkitError(f"mlp needs a non-empty event shape of positive sizes, got {data_shape!r}")
        self.data_shape = shape
        self.output_shape = shape if output_shape is None else tuple(int(size) for size in output_shape)
        if not self.output_shape or any(size <= 0 for size in self.output_shape):
            raise FlowkitError(f"mlp needs an output shape of positive sizes, got {output_shape!r}")
        self.num_classes = int(num_classes) if self.params.class_conditional else 0
        self.inputs = (("r",) if self.params.second_time else ()) + (("y",) if self.num_classes else ())
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
        labels = self.num_classes + 1 if self.num_classes else 0
        times = (2 if p.second_time else 1) * (1 + 2 * p.time_features)
        widths = [dim + times + labels, *p.hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), ACTIVATIONS[p.activation]()]
        layers.append(nn.Linear(widths[-1], math.prod(self.output_shape)))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> MLP:
        """Build for the data's event shape ``context.data_shape``, predicting ``context.output_shape``,
        conditioned on the dataset's classes where asked and it has labels."""
        classes = context.dataset.num_classes if context.dataset is not None else 0
        return cls(
            params, data_shape=context.data_shape, output_shape=context.output_shape, num_classes=classes
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, r: Tensor | None = None) -> Tensor:
        """``x (B, *D)``, ``t (B,)`` (labels ``y (B,)`` where conditional, the second time ``r (B,)``
        where two-time) -> ``(B, *O)``."""
        t = t.to(x.dtype)[:, None]
        parts = [x.reshape(x.shape[0], -1), *self._time_features(t)]
        if self.params.second_time:
            if r is None:
                raise FlowkitError("mlp with second_time = true needs the second time r (forward(x, t, r=r))")
            parts += self._time_features(r.to(x.dtype)[:, None] - t)
        if self.num_classes:
            labels = y if y is not None else torch.full((x.shape[0],), self.num_classes, device=x.device)
            parts.append(nn.functional.one_hot(labels, self.num_classes + 1).to(x.dtype))
        return self.net(torch.cat(parts, dim=1)).reshape((x.shape[0], *self.output_shape))

    def _time_features(self, t: Tensor) -> list[Tensor]:
        """``t (B, 1)`` and, with ``time_features``, its Fourier features: ``(B, 1 + 2 * time_features)``
        in parts."""
        if self.frequencies is None:
            return [t]
        angles = t * self.frequencies.to(t.dtype)
        return [t, torch.sin(angles), torch.cos(angles)]
