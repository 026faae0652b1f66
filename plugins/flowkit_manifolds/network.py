"""A tangent-space network: an MLP whose output is projected onto the tangent space of the manifold.

On the sphere the input is the point itself and the output ``P_x f(x, t)``; on the torus the input is
``(cos x, sin x)`` (so the field is periodic, with no seam at ``0 = 2 pi``) and every vector is
tangent. The manifold is the pipeline's ``geodesic`` path's.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from flowkit.errors import CapabilityError
from flowkit.interfaces import BuildContext, Network
from flowkit.params import param
from flowkit_manifolds.geometry import Manifold
from flowkit_manifolds.path import GeodesicPath

ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def _check_hidden(instance: object, attribute: attrs.Attribute, value: list[int]) -> None:
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"hidden must list at least one layer width, e.g. [256, 256]; got {value!r}")
    for width in value:
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise ValueError(f"hidden must hold positive int layer widths; got {value!r}")


class TangentMLP(Network):
    """``forward(x (B, n), t (B,)) -> (B, n)``, tangent to the manifold at ``x``.

    Layers: ``Linear`` and the activation for each width in ``hidden``, then a ``Linear`` to ``n``,
    whose output ``f`` becomes ``to_tangent(x, f)``. Inputs: ``[x, t]`` on the sphere, ``[cos k x,
    sin k x (k = 1 .. harmonics), t]`` on the torus (a sharp pattern needs more than ``k = 1``),
    with ``2 * time_features`` Fourier features ``sin(pi 2^k t), cos(pi 2^k t)`` appended to ``t``
    when asked for.
    """

    frequencies: Tensor
    harmonic: Tensor

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
            doc="Fourier frequencies of t fed in besides t (0: plain t).",
            validator=[attrs.validators.ge(0), attrs.validators.le(32)],
        )
        harmonics: int = param(
            1,
            doc="On the torus: the input is cos(k x), sin(k x) for k = 1 .. harmonics (periodic in x).",
            validator=[attrs.validators.ge(1), attrs.validators.le(64)],
        )

    def __init__(self, params: TangentMLP.Params, manifold: Manifold, dim: int) -> None:
        super().__init__(params)
        self.manifold, self.dim = manifold, dim
        periodic = manifold.name == "torus"
        width_in = (2 * dim * params.harmonics if periodic else dim) + 1 + 2 * params.time_features
        layers: list[nn.Module] = []
        for width in params.hidden:
            layers += [nn.Linear(width_in, width), ACTIVATIONS[params.activation]()]
            width_in = width
        layers.append(nn.Linear(width_in, dim))
        self.layers = nn.Sequential(*layers)
        self.periodic = periodic
        self.register_buffer(
            "frequencies", math.pi * 2.0 ** torch.arange(params.time_features, dtype=torch.float32)
        )
        # Not saved: it follows from the parameters.
        harmonic = torch.arange(1, params.harmonics + 1, dtype=torch.float32)
        self.register_buffer("harmonic", harmonic, persistent=False)

    @classmethod
    def from_params(cls, params: TangentMLP.Params, context: BuildContext) -> TangentMLP:
        path = context.path
        if not isinstance(path, GeodesicPath):
            found = "no [path]" if path is None else f"path '{path.display_name}'"
            raise CapabilityError(
                f"model 'tangent-mlp' projects onto the tangent space of a manifold, but the pipeline has "
                f'{found}; use [path] kind = "geodesic"'
            )
        shape = tuple(context.output_shape)
        if len(shape) != 1 or shape != tuple(context.data_shape):
            raise CapabilityError(
                f"model 'tangent-mlp' predicts a tangent vector of the data's shape (n,), but the loss "
                f"asks for {shape} on data of shape {tuple(context.data_shape)}; use a velocity loss "
                f'(kind = "cfm") on vector data'
            )
        return cls(params, path.manifold, shape[0])

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.to(x.dtype)[:, None]
        if self.periodic:
            angles = (x[:, :, None] * self.harmonic.to(x.dtype)).flatten(1)  # (B, n * harmonics)
            features = [torch.cos(angles), torch.sin(angles)]
        else:
            features = [x]
        features.append(t)
        if self.params.time_features:
            angle = t * self.frequencies.to(x.dtype)
            features += [torch.sin(angle), torch.cos(angle)]
        return self.manifold.to_tangent(x, self.layers(torch.cat(features, dim=1)))
