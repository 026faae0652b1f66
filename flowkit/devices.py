"""The contract of a device backend (the kind ``device``): where tensors live and how the hot loops
run. Re-exported by :mod:`flowkit.interfaces`, where plugins import it from."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowkit.building import Component


class DeviceBackend(Component):
    """Where tensors live and how the hot loops run (device, precision, compilation).

    ``from_params`` raises a :class:`flowkit.errors.FlowkitError` when the device is not available, so
    a run fails before any work starts. The engine calls :meth:`prepare_module` on the model before
    training or sampling, and :meth:`compile_sampler` only for a simulator that is ``capturable``.
    """

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The torch device tensors and modules live on."""

    def generator(self, seed: int) -> torch.Generator:
        """A generator on this device seeded with ``seed``."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def prepare_module(self, module: nn.Module) -> nn.Module:
        """Move a module to the device and return the module to call (compiled, where asked). The
        returned module shares ``module``'s parameters."""
        return module.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Context for the forward pass of training (mixed precision, where enabled)."""
        return contextlib.nullcontext()

    @property
    def captures_samplers(self) -> bool:
        """Whether :meth:`compile_sampler` captures (so the engine reports progress once, at the end)."""
        return False

    def compile_sampler(self, fn: Callable[[Tensor], Tensor], example: Tensor) -> Callable[[Tensor], Tensor]:
        """Optionally capture a fixed-step sampler ``fn(x0) -> x1`` (e.g. as a CUDA graph)."""
        return fn

    def synchronize(self) -> None:
        """Wait for queued work (for timing)."""

    def memory_available(self) -> int | None:
        """Bytes of memory free for tensors on :attr:`device`, ``None`` when unknown. The engine
        refuses, at build time, batch and sample sizes whose estimated need exceeds it."""
        return None
