"""A device backend: the CPU with a fixed number of threads."""

from __future__ import annotations

import attrs
import torch

from flowkit.interfaces import DeviceBackend
from flowkit.params import param


class PinnedCPU(DeviceBackend):
    """The CPU, with ``torch.set_num_threads(threads)`` called when built (process-wide, as torch's
    setting is): the same thread count on every machine, so a run's timings compare across them."""

    @attrs.define(frozen=True)
    class Params:
        threads: int = param(1, doc="Intra-op CPU threads.", validator=attrs.validators.in_(range(1, 257)))

    def __init__(self, params: PinnedCPU.Params | None = None) -> None:
        super().__init__(params)
        torch.set_num_threads(self.params.threads)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")
