"""The extra scalars a loss reports (:class:`flowkit.interfaces.LossValue`), kept until a log step.

A loss returning a plain tensor costs nothing here (one ``isinstance``). A :class:`LossValue`'s
scalars are detached and kept on the device, step after step; at a log step their means over the
steps since the last log (then over the ranks, one all-reduce) are read once and logged as
``loss/<name>``, beside the loss. Nothing is read from the device between log steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowkit.engine.distributed import World, mean_over_ranks
from flowkit.errors import PluginError
from flowkit.interfaces import LossValue

#: Every reported scalar is logged under this prefix, so it never takes a key of the engine's own.
PREFIX = "loss/"


class LossScalars:
    """The window of a loss's extra scalars since the last log step, ``{name: [scalar, ...]}``."""

    def __init__(self, loss_name: str) -> None:
        self.loss_name = loss_name
        self.window: dict[str, list[Tensor]] = {}

    def take(self, value: Tensor | LossValue) -> Tensor:
        """The loss to backpropagate; a :class:`LossValue`'s scalars join the window (detached)."""
        if not isinstance(value, LossValue):
            return self._checked(value)
        for name, scalar in value.scalars.items():
            kept = self.window.get(name)
            if kept is None:
                self._check(name, scalar)
                kept = self.window[name] = []
            kept.append(scalar.detach())
        return self._checked(value.loss)

    def keep(self, name: str, scalar: Tensor) -> None:
        """Add one detached scalar of the engine's own (the guide's loss) to the window."""
        self.window.setdefault(name, []).append(scalar)

    def _checked(self, loss: object) -> Tensor:
        """``loss`` when it is a one-element tensor that depends on the parameters; else one line."""
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            got = (
                f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
            )
            raise PluginError(
                f"loss '{self.loss_name}' returned {got}; a loss returns a tensor of one element (the "
                "batch's mean loss) or a LossValue holding one"
            )
        if not loss.requires_grad:
            raise PluginError(
                f"loss '{self.loss_name}' returned a tensor that does not depend on the model's parameters "
                "(no gradient to train with); compute it from the model the loss receives"
            )
        return loss

    def _check(self, name: object, scalar: object) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(
                f"loss '{self.loss_name}' reports a scalar named {name!r}; names are non-empty strings "
                f"(logged as {PREFIX}<name>)"
            )
        if not isinstance(scalar, Tensor) or scalar.numel() != 1:
            got = (
                f"a tensor of shape {tuple(scalar.shape)}"
                if isinstance(scalar, Tensor)
                else type(scalar).__name__
            )
            raise PluginError(
                f"loss '{self.loss_name}' reports scalar '{name}' as {got}; a reported scalar is a "
                "tensor of one element"
            )

    def means(self, world: World) -> dict[str, float]:
        """``{"loss/<name>": mean}`` over the window (and the ranks); empties the window. One device
        read (and one all-reduce under torchrun); ``{}`` when the loss reports nothing."""
        if not self.window:
            return {}
        names = sorted(self.window)
        means = torch.stack([torch.stack(self.window[name]).float().mean() for name in names])
        means = mean_over_ranks(means, world)
        self.window = {}
        return {PREFIX + name: float(value) for name, value in zip(names, means.tolist(), strict=True)}

    def state_dict(self) -> dict[str, Any]:
        """The window as CPU tensors, for a checkpoint (a resumed run logs the same means)."""
        return {name: torch.stack(values).cpu() for name, values in self.window.items()}

    def load_state_dict(self, state: dict[str, Any] | None, device: torch.device) -> None:
        self.window = {name: list(values.to(device).unbind()) for name, values in (state or {}).items()}
