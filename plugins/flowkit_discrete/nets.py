"""``token-mlp``: a multilayer perceptron over token sequences predicting logits ``(B, L) -> (B, L, V)``."""

from __future__ import annotations

import itertools
import math
from typing import cast

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Network
from flowkit.params import param


def _check_hidden(instance: object, attribute: attrs.Attribute, value: list[int]) -> None:
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"hidden must list at least one layer width, e.g. [256, 256]; got {value!r}")
    for width in value:
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"hidden must hold positive int layer widths; got {value!r}")


class TokenMLP(Network):
    """``forward(x (B, *D) int64, t (B,)) -> (B, *O)``: each token embedded (a table of ``states``
    rows of ``embedding`` values), the embeddings flattened and concatenated with ``t`` and
    ``2 * time_features`` Fourier features ``sin(pi 2^k t), cos(pi 2^k t)``, then ``Linear`` and SiLU for
    each width in ``hidden`` and a ``Linear`` to ``prod(O)``. ``O`` is the loss's output shape
    (``(*D, V)``: logits of the ``V`` values of each token); ``states`` is the path's (``V + 1`` with
    the mask source, which the network reads but never predicts).

    With ``class_conditional = true`` on labelled data (``K`` classes) it declares the input ``y``
    (``y = K`` the null class) and adds a learned embedding of ``y`` (``K + 1`` rows) to the input.
    """

    @attrs.define(frozen=True)
    class Params:
        hidden: list[int] = param(
            factory=lambda: [256, 256, 256], validator=_check_hidden, doc="Widths of the hidden layers."
        )
        embedding: int = param(
            32, doc="Values in each token's (and the label's) embedding.", validator=attrs.validators.ge(1)
        )
        time_features: int = param(
            4,
            doc="Fourier frequencies of t fed in besides t (at most 32).",
            validator=[attrs.validators.ge(0), attrs.validators.le(32)],
        )
        class_conditional: bool = param(
            False, doc="Condition on the dataset's class labels (input y, plus a null class for guidance)."
        )

    def __init__(
        self,
        params: Params | None = None,
        *,
        data_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        states: int,
        num_classes: int = 0,
    ) -> None:
        super().__init__(params)
        p = self.params
        self.data_shape = tuple(int(size) for size in data_shape)
        self.output_shape = tuple(int(size) for size in output_shape)
        if not self.data_shape or any(size <= 0 for size in (*self.data_shape, *self.output_shape)):
            raise FlowkitError(
                f"token-mlp needs shapes of positive sizes, got data {data_shape!r}, output {output_shape!r}"
            )
        self.states = int(states)
        self.num_classes = int(num_classes) if p.class_conditional else 0
        self.inputs = ("y",) if self.num_classes else ()
        self.tokens = nn.Embedding(self.states, p.embedding)
        self.labels = nn.Embedding(self.num_classes + 1, p.embedding) if self.num_classes else None
        self.register_buffer(
            "frequencies",
            math.pi * 2.0 ** torch.arange(p.time_features, dtype=torch.float32),
            persistent=False,
        )
        width = math.prod(self.data_shape) * p.embedding + 1 + 2 * p.time_features
        widths = [width + (p.embedding if self.num_classes else 0), *p.hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in itertools.pairwise(widths):
            layers += [nn.Linear(width_in, width_out), nn.SiLU()]
        layers.append(nn.Linear(widths[-1], math.prod(self.output_shape)))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_params(cls, params: Params, context: BuildContext) -> TokenMLP:
        """Build for the data's tokens, the path's ``states`` and the loss's ``context.output_shape``."""
        states = int(getattr(context.path, "states", 0) or getattr(context.dataset, "vocabulary", 0) or 0)
        if states < 2:
            raise FlowkitError(
                "model 'token-mlp' embeds categorical tokens, but neither the path nor the dataset "
                'declares how many values a token takes; use [path] kind = "mixture" on a categorical dataset'
            )
        classes = context.dataset.num_classes if context.dataset is not None else 0
        return cls(
            params,
            data_shape=context.data_shape,
            output_shape=context.output_shape,
            states=states,
            num_classes=classes,
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Tokens ``x (B, *D)`` (any dtype holding integers), ``t (B,)`` (labels ``y (B,)`` where
        conditional) -> logits ``(B, *O)``."""
        tokens = x.long()  # a float probe of zeros (the engine's size check) reads as tokens too
        t = t.to(torch.float32)[:, None]
        frequencies = cast(Tensor, self.frequencies)
        angles = t * frequencies
        parts = [self.tokens(tokens).flatten(1), t, torch.sin(angles), torch.cos(angles)]
        if self.labels is not None:
            labels = y if y is not None else torch.full((x.shape[0],), self.num_classes, device=x.device)
            parts.append(self.labels(labels))
        return self.net(torch.cat(parts, dim=1)).reshape(x.shape[0], *self.output_shape)
