"""A network with two heads, a velocity and a score, for losses that train both (``sb-cfm``)."""

from __future__ import annotations

import attrs
from torch import Tensor

from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext, Model, Network, call_network, network_inputs
from flowkit.params import component


class VelocityScore(Network):
    """Two backbones of the same data shape: ``velocity(x (B, *D), t (B,))`` and ``score(x, t)``.

    ``forward`` is the velocity head, so a loss that trains only a velocity can use it too. Each head
    is any trainable ``[model]`` (default ``mlp``), e.g.
    ``[model] kind = "velocity-score"`` with ``velocity = { kind = "mlp", hidden = [256, 256] }``.
    """

    @attrs.define(frozen=True)
    class Params:
        velocity: Model = component("mlp", doc="The velocity head (a trainable model).")
        score: Model = component("mlp", doc="The score head (a trainable model).")

    def __init__(self, params: VelocityScore.Params) -> None:
        super().__init__(params)
        for name in ("velocity", "score"):
            head = getattr(params, name)
            if not isinstance(head, Network):
                raise FlowkitError(
                    f"[model] {name}: model '{head.registered_name}' is not a trainable network; "
                    'use e.g. { kind = "mlp" }'
                )
        self.velocity = params.velocity
        self.score = params.score
        # what forward (the velocity head) takes; each head is called with its own inputs
        self.inputs = network_inputs(self.velocity)

    @classmethod
    def from_params(cls, params: VelocityScore.Params, context: BuildContext) -> VelocityScore:
        """The heads are already built (for ``context.data_shape``) by the config loader."""
        return cls(params)

    def forward(self, x: Tensor, t: Tensor, **inputs: Tensor) -> Tensor:
        """The velocity head, ``(B, *D)``."""
        return call_network(self.velocity, x, t, **inputs)
