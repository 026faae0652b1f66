"""What a component returns, checked where the engine receives it.

A plugin written against an older contract can return something the engine cannot use: a simulator
that called the now-abstract ``Simulator.simulate`` through ``super()`` returns ``None``, and the
engine used to die far from it (``'NoneType' object has no attribute 'cpu'``). Each check here costs
an ``isinstance`` and a shape comparison (nothing is read from the device), and a wrong return is one
line naming the plugin, the component, the method and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowkit.errors import PluginError
from flowkit.interfaces import Component, ProbabilityPath


def returned_tensor(
    value: object, component: Component, method: str, shape: Sequence[int] | None, what: str
) -> Tensor:
    """``value`` when it is a tensor of ``shape`` (any shape when ``None``; any dtype: token data are
    integers); else a :class:`PluginError` naming ``component``, its ``method`` and ``what`` the value
    should have been."""
    expected = f"a tensor{_shaped(shape)} ({what})"
    if not isinstance(value, Tensor):
        raise PluginError(f"{component.described}: {method} returned {_kind(value)}; expected {expected}")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise PluginError(
            f"{component.described}: {method} returned a tensor of shape {tuple(value.shape)}; "
            f"expected {expected}"
        )
    return value


def draw_prior(
    path: ProbabilityPath, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """``shape`` draws of the path's ``p_init`` (``sample_prior``), checked: how the engine draws them
    wherever it does (sampling, the noise of a training batch, the build's check of the dynamics)."""
    x0 = path.sample_prior(shape, generator=generator, device=device)
    return returned_tensor(x0, path, "sample_prior", shape, "draws of p_init")


def returned_labelled(value: object, component: Component, method: str, n: int) -> tuple[Tensor, Tensor]:
    """``value`` when it is ``(x, y)``: ``x`` a tensor of ``n`` points, ``y`` ``(n,)``
    integer labels; else a :class:`PluginError` naming ``component`` and ``method``."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise PluginError(
            f"{component.described}: {method} returned {_kind(value)}; expected a pair (x, y) of {n} "
            "points and their integer labels"
        )
    x, y = value
    if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[0] != n:
        raise PluginError(
            f"{component.described}: {method} returned x as {_kind(x)}; expected a tensor of {n} points"
        )
    if not isinstance(y, Tensor) or tuple(y.shape) != (n,) or y.is_floating_point():
        raise PluginError(
            f"{component.described}: {method} returned y as {_kind(y)}; expected integer labels of shape "
            f"({n},)"
        )
    return x, y


def _shaped(shape: Sequence[int] | None) -> str:
    if shape is None:
        return ""
    return " of shape (" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _kind(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and {value.dtype}"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return f"a {type(value).__name__}"
