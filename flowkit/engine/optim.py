"""The optimiser's parts: the learning-rate schedule, the moving average of the weights, AdamW."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowkit.engine.sections import TrainSection


def lr_factor(cfg: TrainSection) -> Callable[[int], float]:
    """The learning-rate multiplier at step ``k``: linear warm-up, then constant or cosine decay."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class WeightAverage:
    """Exponential moving average of a network's parameters: ``avg <- d_k avg + (1 - d_k) param``.

    The decay warms up, ``d_k = min(decay, (1 + k) / (10 + k))`` at update ``k``: with a fixed 0.999
    the average would still hold 37% of the random initial weights after 1,000 steps (5% after
    3,000). One fused ``_foreach_lerp_`` per step over preallocated copies (``AveragedModel`` also
    rebuilds parameter lists on every update; see ``benchmarks/reference/engine-notes.md``).
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.network = network
        self.decay = decay
        self.updates = 0
        self.names = [name for name, _ in network.named_parameters()]
        self.params: list[Tensor] = [p for _, p in network.named_parameters()]
        self.averages = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the averages towards the current parameters."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        torch._foreach_lerp_(self.averages, self.params, 1.0 - decay)

    def state_dict(self) -> dict[str, Tensor]:
        """The network's state dict with the averaged parameters (buffers as they are)."""
        state = dict(self.network.state_dict())
        state.update({name: avg.clone() for name, avg in zip(self.names, self.averages, strict=True)})
        return state

    @torch.no_grad()
    def load_averages(self, state: dict[str, Tensor], updates: int) -> None:
        """Restore the averages from a :meth:`state_dict` and the number of updates made so far."""
        for name, avg in zip(self.names, self.averages, strict=True):
            avg.copy_(state[name])
        self.updates = updates


def adamw(params: list[nn.Parameter], cfg: TrainSection) -> torch.optim.Optimizer:
    """AdamW with its fused kernel where the device has one (CPU and CUDA in torch >= 2.4): the same
    update in one kernel instead of a loop over the tensors (``benchmarks/reference/engine-notes.md``)."""
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # e.g. a device without a fused implementation
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
